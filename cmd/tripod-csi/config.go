package main

import (
	"bufio"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"

	"github.com/tripod-dev/tripod/internal/csi/driver"
)

// config is the [csi] table of tripod's config file
// (/etc/tripod/tripod.toml); every field has a default. The flag tag names
// the command-line flag that overrides the field.
type config struct {
	Endpoint        string `toml:"endpoint" flag:"endpoint"`
	NodeID          string `toml:"node_id" flag:"node-id"`
	Root            string `toml:"root" flag:"root"`
	Name            string `toml:"name" flag:"name"`
	Capacity        string `toml:"capacity" flag:"capacity"`
	MaxVolumes      int64  `toml:"max_volumes" flag:"max-volumes"`
	DefaultFsType   string `toml:"default_fstype" flag:"default-fstype"`
	RegistrationDir string `toml:"registration_dir" flag:"registration-dir"`
	LogLevel        string `toml:"log_level" flag:"log-level"`
}

func defaultConfig() config {
	host, _ := os.Hostname()
	return config{
		Endpoint:      "unix:///var/lib/kubelet/plugins/" + driver.DefaultName + "/csi.sock",
		NodeID:        host,
		Root:          "/var/lib/tripod/csi",
		Name:          driver.DefaultName,
		DefaultFsType: "ext4",
		LogLevel:      "info",
	}
}

// merge takes flags given on the command line over the file's values.
func merge(file, flags config, set map[string]bool) config {
	out := file
	fv, ov := reflect.ValueOf(flags), reflect.ValueOf(&out).Elem()
	for i := range fv.NumField() {
		if set[fv.Type().Field(i).Tag.Get("flag")] {
			ov.Field(i).Set(fv.Field(i))
		}
	}
	return out
}

// loadConfig reads the [csi] table of a TOML file: `key = "string"`,
// `key = 123` and `key = true` lines, comments and other tables skipped.
// Unknown keys in [csi] are errors, so a typo does not pass silently.
func loadConfig(path string, c *config) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	v := reflect.ValueOf(c).Elem()
	fields := map[string]int{}
	for i := range v.NumField() {
		fields[v.Type().Field(i).Tag.Get("toml")] = i
	}
	table := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if line[0] == '[' {
			table = strings.Trim(line, "[] ")
			continue
		}
		if table != "csi" {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			return fmt.Errorf("%s:%d: want key = value", path, n)
		}
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		i, ok := fields[key]
		if !ok {
			return fmt.Errorf("%s:%d: unknown key %q in [csi]", path, n, key)
		}
		fv := v.Field(i)
		switch fv.Kind() {
		case reflect.String:
			s, err := strconv.Unquote(val)
			if err != nil {
				return fmt.Errorf("%s:%d: %s: want a quoted string", path, n, key)
			}
			fv.SetString(s)
		case reflect.Int64:
			x, err := strconv.ParseInt(val, 10, 64)
			if err != nil {
				return fmt.Errorf("%s:%d: %s: want an integer", path, n, key)
			}
			fv.SetInt(x)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

// TOML renders c as a [csi] table.
func (c config) TOML() string {
	var b strings.Builder
	b.WriteString("[csi]\n")
	v := reflect.ValueOf(c)
	for i := range v.NumField() {
		key := v.Type().Field(i).Tag.Get("toml")
		switch f := v.Field(i); f.Kind() {
		case reflect.String:
			fmt.Fprintf(&b, "%s = %q\n", key, f.String())
		case reflect.Int64:
			fmt.Fprintf(&b, "%s = %d\n", key, f.Int())
		}
	}
	return b.String()
}

func (c config) driverConfig() (driver.Config, error) {
	var capacity int64
	if c.Capacity != "" {
		n, err := parseSize(c.Capacity)
		if err != nil {
			return driver.Config{}, fmt.Errorf("capacity: %w", err)
		}
		capacity = n
	}
	if c.MaxVolumes < 0 {
		return driver.Config{}, fmt.Errorf("max_volumes must not be negative")
	}
	if c.DefaultFsType != "ext4" && c.DefaultFsType != "xfs" {
		return driver.Config{}, fmt.Errorf("default_fstype %q: want ext4 or xfs", c.DefaultFsType)
	}
	log, err := logger(c.LogLevel)
	if err != nil {
		return driver.Config{}, err
	}
	return driver.Config{
		Name: c.Name, NodeID: c.NodeID, Root: c.Root, Capacity: capacity,
		MaxVolumes: c.MaxVolumes, DefaultFsType: c.DefaultFsType, Log: log,
	}, nil
}

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
)

// status says which daemons of the stack run and how many pods tripodd
// holds; it fails unless both run.
func (c *cli) status(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	var sf stackFlags
	sf.register(fs, false)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("status: unexpected arguments %q", fs.Args())
	}
	s, err := sf.load()
	if err != nil {
		return err
	}
	up := 0
	for _, name := range []string{"tripodd", "tripod-csi"} {
		p, d := s.find(name)
		if p == nil {
			fmt.Printf("%-10s not running\n", name)
			continue
		}
		up++
		extra := ""
		if name == "tripodd" {
			if n, err := podsOnDown(ctx, d.endpoint, false); err == nil {
				extra = fmt.Sprintf(", %d pod(s)", n)
			}
		}
		fmt.Printf("%-10s pid %d on %s%s\n", name, p.PID, d.endpoint, extra)
		p.Close()
	}
	if up < 2 {
		return errors.New("tripod is not running (tripod up starts it)")
	}
	return nil
}

// Package image is tripodd's image service core: pull, store, list,
// inspect, remove and garbage-collect images. It knows nothing of gRPC; the
// CRI server translates to and from it, and the runtime service asks it
// for an image's config and layer directories.
package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/tripod-dev/tripod/internal/errdefs"
	"github.com/tripod-dev/tripod/internal/image/content"
	"github.com/tripod-dev/tripod/internal/image/layer"
	"github.com/tripod-dev/tripod/internal/image/pull"
	"github.com/tripod-dev/tripod/internal/image/store"
	"github.com/tripod-dev/tripod/internal/metrics"
)

// Options configure a Service.
type Options struct {
	// Root is the image store's directory (content, layers, metadata).
	Root string
	// ContainerDir holds containers' writable layers; reported by FsInfo.
	ContainerDir     string
	HostsDir         string
	Auths            map[string]pull.Auth
	Platform         pull.Platform
	MaxDownloads     int
	AllowDeviceNodes bool
	// Pinned are references reported as pinned (the pause image and
	// configured ones), so kubelet's image GC keeps them.
	Pinned    []string
	UserAgent string
	Logger    *slog.Logger
	Metrics   *metrics.Registry
	// LayersInUse, if set, returns the chain IDs that containers' root
	// filesystems use (the runtime service's answer); GC keeps them even
	// when their image is gone, as overlay mounts still stack on them.
	// New's start-up repair calls it too: it must answer before New.
	LayersInUse func() map[string]bool
}

// Service is the image store and puller.
type Service struct {
	opt     Options
	log     *slog.Logger
	content *content.Store
	layers  *layer.Store
	db      *store.DB
	client  *pull.Client
	pinned  map[string]bool
	m       serviceMetrics

	// leases protect blobs and layers an unfinished pull or import relies
	// on from a concurrent GC; GC checks and deletes under leaseMu.
	leaseMu sync.Mutex
	leases  map[string]int

	flightMu sync.Mutex
	flights  map[string]*flight

	gcMu sync.Mutex

	progressMu sync.Mutex
	progress   map[string]*Progress
}

type serviceMetrics struct {
	pulls        metrics.Vec // result
	pullBytes    metrics.Vec
	pullSeconds  metrics.Vec
	inProgress   metrics.Vec
	progressDone metrics.Vec // image
	progressAll  metrics.Vec // image
	gcRemoved    metrics.Vec // kind
	images       metrics.Vec
}

// Image is a stored image as the service reports it.
type Image struct {
	store.Image
	Pinned bool
}

// New opens the image store under opt.Root, repairing whatever a crash
// left half-written before it returns.
func New(ctx context.Context, opt Options) (*Service, error) {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Metrics == nil {
		opt.Metrics = metrics.New()
	}
	if opt.MaxDownloads <= 0 {
		opt.MaxDownloads = 4
	}
	if opt.Platform.OS == "" {
		opt.Platform = pull.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
	}
	if err := os.MkdirAll(opt.Root, 0o700); err != nil {
		return nil, fmt.Errorf("image root: %w", err)
	}
	cs, err := content.New(filepath.Join(opt.Root, "content"))
	if err != nil {
		return nil, err
	}
	ls, err := layer.NewStore(filepath.Join(opt.Root, "layers"), layer.Options{AllowDeviceNodes: opt.AllowDeviceNodes})
	if err != nil {
		return nil, err
	}
	db, err := store.Open(filepath.Join(opt.Root, "meta.db"))
	if err != nil {
		return nil, err
	}
	s := &Service{
		opt: opt, log: opt.Logger, content: cs, layers: ls, db: db,
		client:   pull.NewClient(opt.HostsDir, opt.Auths, opt.UserAgent),
		pinned:   map[string]bool{},
		leases:   map[string]int{},
		flights:  map[string]*flight{},
		progress: map[string]*Progress{},
	}
	for _, p := range opt.Pinned {
		r, err := pull.ParseRef(p)
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("pinned image %q: %w", p, err)
		}
		s.pinned[r.String()] = true
	}
	reg := opt.Metrics
	s.m = serviceMetrics{
		pulls:        reg.Counter("tripod_image_pulls_total", "Image pulls by result (ok or the error kind).", "result"),
		pullBytes:    reg.Counter("tripod_image_pull_bytes_total", "Bytes downloaded by image pulls."),
		pullSeconds:  reg.Counter("tripod_image_pull_seconds_total", "Wall time spent in successful image pulls."),
		inProgress:   reg.Gauge("tripod_image_pulls_in_progress", "Image pulls currently running."),
		progressDone: reg.Gauge("tripod_image_pull_progress_bytes", "Bytes done of a running pull.", "image"),
		progressAll:  reg.Gauge("tripod_image_pull_size_bytes", "Bytes to download for a running pull.", "image"),
		gcRemoved:    reg.Counter("tripod_image_gc_removed_total", "Blobs and layers removed by garbage collection.", "kind"),
		images:       reg.Gauge("tripod_images", "Images in the store."),
	}
	if err := s.repair(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// Close releases the metadata store.
func (s *Service) Close() error { return s.db.Close() }

// Root is the image store's directory.
func (s *Service) Root() string { return s.opt.Root }

// repair runs at start, before anything else touches the store: partial
// writes go, images whose pieces are missing go (and can be pulled again),
// and GC removes what no committed image references.
func (s *Service) repair(ctx context.Context) error {
	n1, err := s.content.CleanIngest()
	if err != nil {
		return err
	}
	n2, err := s.layers.CleanTmp()
	if err != nil {
		return err
	}
	imgs, err := s.db.Images()
	if err != nil {
		return fmt.Errorf("repair: %w", err)
	}
	committed, err := s.db.Layers()
	if err != nil {
		return fmt.Errorf("repair: %w", err)
	}
	broken := 0
	for _, img := range imgs {
		if why := s.check(img, committed); why != "" {
			s.log.Warn("image store repair: removing incomplete image", "image", img.ID, "tags", img.RepoTags, "reason", why)
			if err := s.db.DeleteImage(img.ID); err != nil {
				return fmt.Errorf("repair: %w", err)
			}
			broken++
		}
	}
	res, err := s.GC(ctx)
	if err != nil {
		return fmt.Errorf("repair: %w", err)
	}
	if n1+n2+broken+res.Blobs+res.Layers > 0 {
		s.log.Info("image store repaired", "partialBlobs", n1, "partialLayers", n2, "brokenImages", broken,
			"garbageBlobs", res.Blobs, "garbageLayers", res.Layers)
	}
	s.updateCount()
	return nil
}

// check says what is missing from an image, or "".
func (s *Service) check(img store.Image, committed map[string]store.Layer) string {
	for _, b := range img.Blobs {
		h, err := v1.NewHash(b)
		if err != nil || !s.content.Has(h, -1) {
			return "blob " + b + " missing"
		}
	}
	for _, l := range img.Layers {
		h, err := v1.NewHash(l.ChainID)
		if err != nil || !s.layers.Exists(h) {
			return "layer " + l.ChainID + " missing"
		}
		if _, ok := committed[l.ChainID]; !ok {
			return "layer " + l.ChainID + " not committed"
		}
	}
	return ""
}

func (s *Service) updateCount() {
	if imgs, err := s.db.Images(); err == nil {
		s.m.images.Set(float64(len(imgs)))
	}
}

// lease protects keys (blob digests, "layer:"+chain ID) from GC until the
// returned func is called.
func (s *Service) lease(keys ...string) func() {
	s.leaseMu.Lock()
	for _, k := range keys {
		s.leases[k]++
	}
	s.leaseMu.Unlock()
	return func() {
		s.leaseMu.Lock()
		for _, k := range keys {
			if s.leases[k]--; s.leases[k] <= 0 {
				delete(s.leases, k)
			}
		}
		s.leaseMu.Unlock()
	}
}

// GCResult counts what a GC removed.
type GCResult struct {
	Blobs, Layers int
	Bytes         int64
}

// GC removes blobs and layers that no image references and no running
// pull holds.
func (s *Service) GC(ctx context.Context) (GCResult, error) {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	var res GCResult
	imgs, err := s.db.Images()
	if err != nil {
		return res, fmt.Errorf("gc: %w", err)
	}
	blobs, layers := map[string]bool{}, map[string]bool{}
	for _, img := range imgs {
		for _, b := range img.Blobs {
			blobs[b] = true
		}
		for _, l := range img.Layers {
			layers[l.ChainID] = true
		}
	}
	if s.opt.LayersInUse != nil {
		for id := range s.opt.LayersInUse() {
			layers[id] = true
		}
	}
	committed, err := s.db.Layers()
	if err != nil {
		return res, fmt.Errorf("gc: %w", err)
	}
	var forget []string
	for id := range committed {
		if !layers[id] {
			forget = append(forget, id)
		}
	}
	var detached []string
	err = s.layers.Walk(func(chainID v1.Hash) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if layers[chainID.String()] {
			return nil
		}
		s.leaseMu.Lock()
		defer s.leaseMu.Unlock()
		if s.leases["layer:"+chainID.String()] > 0 {
			return nil
		}
		dst, err := s.layers.Detach(chainID)
		if err != nil {
			return err
		}
		if dst != "" {
			detached = append(detached, dst)
			res.Layers++
		}
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("gc layers: %w", err)
	}
	// Forget records only after their directories are gone from their
	// names, so a crash in between leaves a record repair drops.
	if err := s.db.DeleteLayers(forget); err != nil {
		return res, fmt.Errorf("gc: %w", err)
	}
	for _, d := range detached {
		if err := os.RemoveAll(d); err != nil {
			return res, fmt.Errorf("gc: %w", err)
		}
	}
	err = s.content.Walk(func(d v1.Hash, size int64) error {
		if blobs[d.String()] {
			return nil
		}
		s.leaseMu.Lock()
		defer s.leaseMu.Unlock()
		if s.leases[d.String()] > 0 {
			return nil
		}
		if err := s.content.Delete(d); err != nil {
			return err
		}
		res.Blobs++
		res.Bytes += size
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("gc blobs: %w", err)
	}
	s.m.gcRemoved.Add(float64(res.Blobs), "blob")
	s.m.gcRemoved.Add(float64(res.Layers), "layer")
	return res, nil
}

// Lookup finds a stored image by ID (full, "sha256:"-less, or a unique hex
// prefix of at least 12 characters), tag, or digest reference.
func (s *Service) Lookup(ref string) (Image, error) {
	id, err := s.resolve(ref)
	if err != nil {
		return Image{}, err
	}
	img, err := s.db.Image(id)
	if err != nil {
		return Image{}, err
	}
	return s.wrap(img), nil
}

func (s *Service) resolve(ref string) (string, error) {
	if ref == "" {
		return "", fmt.Errorf("empty image reference: %w", errdefs.ErrInvalidArgument)
	}
	hexPart := strings.TrimPrefix(ref, "sha256:")
	if isHex(hexPart) && len(hexPart) >= 12 {
		if len(hexPart) == 64 {
			if _, err := s.db.Image("sha256:" + hexPart); err == nil {
				return "sha256:" + hexPart, nil
			}
		}
		imgs, err := s.db.Images()
		if err != nil {
			return "", err
		}
		var match []string
		for _, img := range imgs {
			if strings.HasPrefix(strings.TrimPrefix(img.ID, "sha256:"), hexPart) {
				match = append(match, img.ID)
			}
		}
		if len(match) == 1 {
			return match[0], nil
		}
		if len(match) > 1 {
			return "", fmt.Errorf("image ID prefix %q is ambiguous: %w", ref, errdefs.ErrInvalidArgument)
		}
		if strings.HasPrefix(ref, "sha256:") {
			return "", fmt.Errorf("image %q: %w", ref, errdefs.ErrNotFound)
		}
	}
	r, err := pull.ParseRef(ref)
	if err != nil {
		return "", err
	}
	return s.db.Resolve(r.String())
}

func isHex(s string) bool {
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return s != ""
}

func (s *Service) wrap(img store.Image) Image {
	out := Image{Image: img}
	for _, n := range append(append([]string{}, img.RepoTags...), img.RepoDigests...) {
		if s.pinned[n] {
			out.Pinned = true
		}
	}
	return out
}

// List returns all images, or those a reference names when filter is set.
func (s *Service) List(filter string) ([]Image, error) {
	if filter != "" {
		img, err := s.Lookup(filter)
		if errors.Is(err, errdefs.ErrNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		return []Image{img}, nil
	}
	imgs, err := s.db.Images()
	if err != nil {
		return nil, err
	}
	out := make([]Image, len(imgs))
	for i, img := range imgs {
		out[i] = s.wrap(img)
	}
	return out, nil
}

// Config returns an image's raw config blob.
func (s *Service) Config(img Image) ([]byte, error) {
	h, err := v1.NewHash(img.Config)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", img.ID, err)
	}
	return s.content.ReadAll(h)
}

// LayerDirs returns an image's unpacked layers, lowest first: the overlay
// lowerdir list is these in reverse.
func (s *Service) LayerDirs(img Image) ([]string, error) {
	out := make([]string, len(img.Layers))
	for i, l := range img.Layers {
		h, err := v1.NewHash(l.ChainID)
		if err != nil {
			return nil, err
		}
		out[i] = s.layers.Path(h)
	}
	return out, nil
}

// Remove deletes the image ref names (with all its names) and frees what
// nothing else references. A missing image is not an error: the CRI makes
// removal idempotent.
func (s *Service) Remove(ctx context.Context, ref string) error {
	id, err := s.resolve(ref)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := s.db.DeleteImage(id); err != nil {
		return fmt.Errorf("remove %s: %w", ref, err)
	}
	s.updateCount()
	res, err := s.GC(ctx)
	if err != nil {
		return err
	}
	s.log.Info("image removed", "image", id, "ref", ref, "freedBlobs", res.Blobs, "freedLayers", res.Layers)
	return nil
}

// FsUsage is one filesystem's usage by the store.
type FsUsage struct {
	Mountpoint string
	Bytes      uint64
	Inodes     uint64
}

// FsInfo reports usage by images (content + layers + metadata) and by
// containers' writable layers.
func (s *Service) FsInfo(ctx context.Context) (images, containers FsUsage, err error) {
	images.Mountpoint = s.opt.Root
	layers, err := s.db.Layers()
	if err != nil {
		return images, containers, err
	}
	for _, l := range layers {
		images.Bytes += uint64(l.Bytes)
		images.Inodes += uint64(l.Inodes) + 1
	}
	err = s.content.Walk(func(_ v1.Hash, size int64) error {
		images.Bytes += uint64(size)
		images.Inodes++
		return nil
	})
	if err != nil {
		return images, containers, err
	}
	if fi, err := os.Stat(filepath.Join(s.opt.Root, "meta.db")); err == nil {
		images.Bytes += uint64(fi.Size())
		images.Inodes++
	}
	containers.Mountpoint = s.opt.ContainerDir
	if s.opt.ContainerDir != "" {
		st, err := layer.Usage(s.opt.ContainerDir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return images, containers, fmt.Errorf("container usage: %w", err)
		}
		containers.Bytes, containers.Inodes = uint64(st.Bytes), uint64(st.Inodes)
	}
	return images, containers, ctx.Err()
}

// userOf splits an image config's User into a numeric UID or a name, as
// the CRI reports them.
func userOf(user string) (*int64, string) {
	u, _, _ := strings.Cut(user, ":")
	if u == "" {
		return nil, ""
	}
	if n, err := strconv.ParseInt(u, 10, 64); err == nil {
		return &n, ""
	}
	return nil, u
}

// chainIDs computes the chain IDs of a stack of diff IDs (OCI image spec).
func chainIDs(diffIDs []v1.Hash) []v1.Hash {
	out := make([]v1.Hash, len(diffIDs))
	for i, d := range diffIDs {
		if i == 0 {
			out[i] = d
			continue
		}
		h, _, _ := v1.SHA256(strings.NewReader(out[i-1].String() + " " + d.String()))
		out[i] = h
	}
	return out
}

func parseConfig(raw []byte) (*v1.ConfigFile, error) {
	var c v1.ConfigFile
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("image config: %v: %w", err, errdefs.ErrDataLoss)
	}
	return &c, nil
}

// Progress is a running pull's state, for logs, metrics and the CLI.
type Progress struct {
	Image       string
	Started     time.Time
	TotalBytes  int64
	DoneBytes   int64
	TotalLayers int
	DoneLayers  int
}

// Pulls returns the progress of every running pull.
func (s *Service) Pulls() []Progress {
	s.progressMu.Lock()
	defer s.progressMu.Unlock()
	out := make([]Progress, 0, len(s.progress))
	for _, p := range s.progress {
		out = append(out, *p)
	}
	return out
}

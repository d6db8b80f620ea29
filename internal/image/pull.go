package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/tripod-dev/tripod/internal/errdefs"
	"github.com/tripod-dev/tripod/internal/image/layer"
	"github.com/tripod-dev/tripod/internal/image/pull"
	"github.com/tripod-dev/tripod/internal/image/store"
)

// layerAttempts is how many times a layer download is started when the
// registry connection fails.
const layerAttempts = 3

// maxConfigSize bounds an image config, which is read into memory.
const maxConfigSize = 16 << 20

// source hands out the blobs of one image: a registry session, or an
// archive being imported.
type source interface {
	Blob(ctx context.Context, d v1.Hash) (io.ReadCloser, error)
}

// manifestSet is what an image is stored from.
type manifestSet struct {
	names          []string // tag and digest references to record
	index          []byte
	indexDigest    v1.Hash
	manifest       []byte
	manifestDigest v1.Hash
	mediaType      string
	parsed         *v1.Manifest
}

// Pull fetches ref (tag or digest; the node's platform from an index),
// unpacks its layers and records it. auth, if not nil, is the request's
// credential for the image's registry.
func (s *Service) Pull(ctx context.Context, ref string, auth *pull.Auth) (img Image, err error) {
	start := time.Now()
	defer func() {
		result := "ok"
		if err != nil {
			result = kindName(err)
		}
		s.m.pulls.Inc(result)
	}()
	r, err := pull.ParseRef(ref)
	if err != nil {
		return Image{}, err
	}
	res, sess, err := s.client.Resolve(ctx, r, auth, s.opt.Platform)
	if err != nil {
		return Image{}, err
	}
	top := res.ManifestDigest
	if len(res.Index) > 0 {
		top = res.IndexDigest
	}
	ms := manifestSet{
		index: res.Index, indexDigest: res.IndexDigest,
		manifest: res.Manifest, manifestDigest: res.ManifestDigest, mediaType: res.ManifestMediaType,
		parsed: res.Parsed,
	}
	if t := r.TagName(); t != "" {
		ms.names = append(ms.names, t)
	}
	ms.names = append(ms.names, r.DigestName(top.String()))
	s.log.Info("pull started", "image", r.String(), "manifest", res.ManifestDigest, "from", res.Endpoint)
	img, err = s.commit(ctx, r.String(), ms, sess)
	if err != nil {
		return Image{}, err
	}
	s.m.pullSeconds.Add(time.Since(start).Seconds())
	s.log.Info("pulled", "image", r.String(), "id", img.ID, "bytes", img.Size, "layers", len(img.Layers),
		"seconds", fmt.Sprintf("%.3f", time.Since(start).Seconds()))
	return img, nil
}

// commit stores an image from src: config, then every layer (downloaded
// concurrently, each unpacked as its bytes arrive), then the manifests, and
// last the metadata record that makes it exist. On failure nothing is
// recorded and what was written for it alone is collected.
func (s *Service) commit(ctx context.Context, label string, ms manifestSet, src source) (img Image, err error) {
	m := ms.parsed
	if m == nil {
		return Image{}, fmt.Errorf("%s: no manifest: %w", label, errdefs.ErrInvalidArgument)
	}
	// Registered first so it ends last: a pull leaves Pulls only once its
	// cleanup is done.
	p := &Progress{Image: label, Started: time.Now(), TotalLayers: len(m.Layers)}
	for _, l := range m.Layers {
		p.TotalBytes += l.Size
	}
	defer s.track(p)()

	keys := []string{ms.manifestDigest.String(), m.Config.Digest.String()}
	if len(ms.index) > 0 {
		keys = append(keys, ms.indexDigest.String())
	}
	for _, l := range m.Layers {
		keys = append(keys, l.Digest.String())
	}
	release := s.lease(keys...)
	defer func() {
		release()
		if err != nil {
			// Free what this attempt alone wrote; leases keep what
			// other pulls are using.
			if _, gerr := s.GC(context.WithoutCancel(ctx)); gerr != nil {
				s.log.Warn("gc after failed pull", "err", gerr)
			}
		}
	}()

	// Config first: it holds the diff IDs the layers are checked against.
	// It is read whole, so its size is bounded.
	if m.Config.Size < 0 || m.Config.Size > maxConfigSize {
		return Image{}, fmt.Errorf("%s: config of %d bytes (at most %d): %w", label, m.Config.Size, maxConfigSize, errdefs.ErrInvalidArgument)
	}
	if !s.content.Has(m.Config.Digest, m.Config.Size) {
		rc, err := src.Blob(ctx, m.Config.Digest)
		if err != nil {
			return Image{}, fmt.Errorf("%s: config: %w", label, err)
		}
		err = s.content.Write(ctx, m.Config.Digest, m.Config.Size, rc, nil)
		rc.Close()
		if err != nil {
			return Image{}, fmt.Errorf("%s: config: %w", label, err)
		}
	}
	rawCfg, err := s.content.ReadAll(m.Config.Digest)
	if err != nil {
		return Image{}, err
	}
	cfg, err := parseConfig(rawCfg)
	if err != nil {
		return Image{}, fmt.Errorf("%s: %w", label, err)
	}
	diffIDs := cfg.RootFS.DiffIDs
	if len(diffIDs) != len(m.Layers) {
		return Image{}, fmt.Errorf("%s: manifest has %d layers, config %d diff IDs: %w", label, len(m.Layers), len(diffIDs), errdefs.ErrDataLoss)
	}
	chains := chainIDs(diffIDs)
	lkeys := make([]string, len(chains))
	for i, c := range chains {
		lkeys[i] = "layer:" + c.String()
	}
	defer s.lease(lkeys...)()

	for i, l := range m.Layers {
		if !l.MediaType.IsLayer() {
			return Image{}, fmt.Errorf("%s: layer %d has media type %q: %w", label, i, l.MediaType, errdefs.ErrInvalidArgument)
		}
	}
	// Layers: up to MaxDownloads at once; the first failure cancels the rest.
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Flush finished layers to disk while the others still download, so
	// the sync before the record finds little left to write. Its errors
	// are the final sync's to report.
	flush, flushed := make(chan struct{}, 1), make(chan struct{})
	go func() {
		defer close(flushed)
		for range flush {
			s.layers.Sync()
		}
	}()
	sem := make(chan struct{}, s.opt.MaxDownloads)
	stats := make([]*layer.Stats, len(m.Layers))
	errs := make([]error, len(m.Layers))
	var wg sync.WaitGroup
	for i, l := range m.Layers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-lctx.Done():
				errs[i] = lctx.Err()
				return
			}
			defer func() { <-sem }()
			st, err := s.ensureLayer(lctx, src, l, diffIDs[i], chains[i], p)
			if err != nil {
				errs[i] = fmt.Errorf("layer %d (%s): %w", i, l.Digest, err)
				cancel()
				return
			}
			stats[i] = st
			s.progressMu.Lock()
			p.DoneLayers++
			s.progressMu.Unlock()
			select {
			case flush <- struct{}{}:
			default:
			}
		}()
	}
	wg.Wait()
	close(flush)
	<-flushed
	if err := firstError(errs); err != nil {
		return Image{}, fmt.Errorf("%s: %w", label, err)
	}

	if err := s.content.Write(ctx, ms.manifestDigest, int64(len(ms.manifest)), bytes.NewReader(ms.manifest), nil); err != nil {
		return Image{}, fmt.Errorf("%s: manifest: %w", label, err)
	}
	blobs := []string{ms.manifestDigest.String(), m.Config.Digest.String()}
	if len(ms.index) > 0 {
		if err := s.content.Write(ctx, ms.indexDigest, int64(len(ms.index)), bytes.NewReader(ms.index), nil); err != nil {
			return Image{}, fmt.Errorf("%s: index: %w", label, err)
		}
		blobs = append(blobs, ms.indexDigest.String())
	}
	// One flush for every blob and layer file, before the record that
	// makes them part of an image: after a power cut, a recorded image is
	// whole (and an unrecorded one is garbage that repair removes).
	if err := s.content.Sync(); err != nil {
		return Image{}, fmt.Errorf("%s: %w", label, err)
	}
	if err := s.layers.Sync(); err != nil {
		return Image{}, fmt.Errorf("%s: sync layers: %w", label, err)
	}

	rec := store.Image{
		ID: m.Config.Digest.String(), Manifest: ms.manifestDigest.String(), MediaType: ms.mediaType,
		Config: m.Config.Digest.String(), Created: time.Now().UTC(),
		Size: int64(len(ms.manifest)) + m.Config.Size,
	}
	for _, n := range ms.names {
		if strings.Contains(n, "@") {
			rec.RepoDigests = append(rec.RepoDigests, n)
		} else {
			rec.RepoTags = append(rec.RepoTags, n)
		}
	}
	rec.UID, rec.Username = userOf(cfg.Config.User)
	var newLayers []store.Layer
	for i, l := range m.Layers {
		rec.Layers = append(rec.Layers, store.ImageLayer{Blob: l.Digest.String(), MediaType: string(l.MediaType),
			Size: l.Size, DiffID: diffIDs[i].String(), ChainID: chains[i].String()})
		blobs = append(blobs, l.Digest.String())
		rec.Size += l.Size
		newLayers = append(newLayers, store.Layer{ChainID: chains[i].String(), Bytes: stats[i].Bytes, Inodes: stats[i].Inodes})
	}
	rec.Blobs = blobs
	if err := s.db.PutImage(rec, newLayers); err != nil {
		return Image{}, fmt.Errorf("%s: record: %w", label, err)
	}
	s.updateCount()
	stored, err := s.db.Image(rec.ID)
	if err != nil {
		return Image{}, err
	}
	return s.wrap(stored), nil
}

// ensureLayer makes sure both the blob and the unpacked layer exist. Only
// one caller at a time works on a given layer; the others wait for it.
func (s *Service) ensureLayer(ctx context.Context, src source, desc v1.Descriptor, diffID, chainID v1.Hash, p *Progress) (*layer.Stats, error) {
	fetch := func(ctx context.Context) (*layer.Stats, error) {
		// A dropped connection costs the layer, not the pull: start the
		// layer over a few times before giving up.
		for attempt := 1; ; attempt++ {
			st, err := s.fetchLayer(ctx, src, desc, diffID, chainID, p)
			if err == nil || !errors.Is(err, errdefs.ErrUnavailable) || attempt == layerAttempts || ctx.Err() != nil {
				return st, err
			}
			s.log.Warn("layer download failed, retrying", "image", p.Image, "layer", desc.Digest, "attempt", attempt, "err", err)
			select {
			case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	st, err := s.once(ctx, "layer:"+chainID.String(), fetch)
	if err != nil {
		return nil, err
	}
	// The caller that did the work may have had the same layer under
	// another compressed blob (same diff ID, other compression): ours
	// must be stored too.
	if !s.content.Has(desc.Digest, desc.Size) {
		return s.once(ctx, "blob:"+desc.Digest.String(), fetch)
	}
	return st, nil
}

func (s *Service) fetchLayer(ctx context.Context, src source, desc v1.Descriptor, diffID, chainID v1.Hash, p *Progress) (_ *layer.Stats, err error) {
	blobOK := s.content.Has(desc.Digest, desc.Size)
	layerOK := s.layers.Exists(chainID)
	onBytes := func(n int64) { s.addProgress(p, n) }
	switch {
	case blobOK && layerOK:
		s.addProgress(p, desc.Size)
		return s.layerStats(chainID)
	case layerOK:
		rc, err := src.Blob(ctx, desc.Digest)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		if err := s.content.Write(ctx, desc.Digest, desc.Size, rc, onBytes); err != nil {
			return nil, err
		}
		return s.layerStats(chainID)
	case blobOK:
		f, err := s.content.Open(desc.Digest)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		st, err := s.layers.Unpack(ctx, chainID, diffID, string(desc.MediaType), f, nil)
		if err != nil {
			return nil, err
		}
		s.addProgress(p, desc.Size)
		return &st, nil
	}
	// Neither: stream the download into the blob store and the unpacker
	// at once, so the bytes are read once and unpacking keeps pace with
	// the network. The layer is published only if the blob verifies.
	w, err := s.content.Begin(desc.Digest, desc.Size, onBytes)
	if err != nil {
		return nil, err
	}
	defer w.Abort()
	defer func() {
		if err != nil { // a retry counts the layer's bytes again
			s.rewindProgress(p, w.Written())
		}
	}()
	rc, err := src.Blob(ctx, desc.Digest)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	tee := io.TeeReader(rc, w)
	st, err := s.layers.Unpack(ctx, chainID, diffID, string(desc.MediaType), tee, func() error {
		// Whatever follows the compressed stream's end still counts
		// towards the blob's digest.
		if _, err := io.Copy(io.Discard, tee); err != nil {
			return err
		}
		return w.Verify()
	})
	if err != nil {
		return nil, err
	}
	if err := w.Commit(); err != nil {
		return nil, err
	}
	return &st, nil
}

func (s *Service) layerStats(chainID v1.Hash) (*layer.Stats, error) {
	if ls, err := s.db.Layers(); err == nil {
		if l, ok := ls[chainID.String()]; ok {
			return &layer.Stats{Bytes: l.Bytes, Inodes: l.Inodes}, nil
		}
	}
	st, err := layer.Usage(s.layers.Path(chainID))
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", chainID, err)
	}
	return &st, nil
}

// flight is one in-progress piece of work that concurrent callers share.
type flight struct {
	done chan struct{}
	st   *layer.Stats
	err  error
}

// once runs fn for key unless another caller already is, in which case it
// waits for that caller's result. If the caller doing the work gave up
// (its context ended), a waiter takes over.
func (s *Service) once(ctx context.Context, key string, fn func(context.Context) (*layer.Stats, error)) (*layer.Stats, error) {
	for {
		s.flightMu.Lock()
		f, ok := s.flights[key]
		if !ok {
			f = &flight{done: make(chan struct{})}
			s.flights[key] = f
			s.flightMu.Unlock()
			f.st, f.err = fn(ctx)
			s.flightMu.Lock()
			delete(s.flights, key)
			s.flightMu.Unlock()
			close(f.done)
			return f.st, f.err
		}
		s.flightMu.Unlock()
		select {
		case <-f.done:
			if f.err != nil && (errors.Is(f.err, context.Canceled) || errors.Is(f.err, context.DeadlineExceeded)) && ctx.Err() == nil {
				continue
			}
			return f.st, f.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (s *Service) addProgress(p *Progress, n int64) {
	s.progressMu.Lock()
	p.DoneBytes += n
	done := p.DoneBytes
	s.progressMu.Unlock()
	s.m.pullBytes.Add(float64(n))
	s.m.progressDone.Set(float64(done), p.Image)
}

// rewindProgress takes back bytes of a failed attempt from a pull's
// progress (not from the downloaded-bytes counter: they were downloaded).
func (s *Service) rewindProgress(p *Progress, n int64) {
	s.progressMu.Lock()
	p.DoneBytes -= n
	done := p.DoneBytes
	s.progressMu.Unlock()
	s.m.progressDone.Set(float64(done), p.Image)
}

// track registers a running pull for Pulls, metrics and periodic progress
// logs; the returned func ends it.
func (s *Service) track(p *Progress) func() {
	s.progressMu.Lock()
	s.progress[p.Image+"\x00"+p.Started.String()] = p
	s.progressMu.Unlock()
	s.m.inProgress.Add(1)
	s.m.progressAll.Set(float64(p.TotalBytes), p.Image)
	s.m.progressDone.Set(0, p.Image)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				s.progressMu.Lock()
				cur := *p
				s.progressMu.Unlock()
				el := time.Since(cur.Started).Seconds()
				s.log.Info("pull progress", "image", cur.Image,
					"bytes", fmt.Sprintf("%d/%d", cur.DoneBytes, cur.TotalBytes),
					"layers", fmt.Sprintf("%d/%d", cur.DoneLayers, cur.TotalLayers),
					"rate", fmt.Sprintf("%.1fMB/s", float64(cur.DoneBytes)/el/1e6))
			}
		}
	}()
	return func() {
		close(stop)
		wg.Wait()
		s.progressMu.Lock()
		delete(s.progress, p.Image+"\x00"+p.Started.String())
		s.progressMu.Unlock()
		s.m.inProgress.Add(-1)
		s.m.progressAll.Delete(p.Image)
		s.m.progressDone.Delete(p.Image)
	}
}

func firstError(errs []error) error {
	// Prefer a real failure over the cancellations it caused.
	for _, e := range errs {
		if e != nil && !errors.Is(e, context.Canceled) {
			return e
		}
	}
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

func kindName(err error) string {
	switch {
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline_exceeded"
	}
	if k := errdefs.Kind(err); k != nil {
		return strings.ReplaceAll(k.Error(), " ", "_")
	}
	return "internal"
}

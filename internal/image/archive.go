package image

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/tripod-dev/tripod/internal/errdefs"
	"github.com/tripod-dev/tripod/internal/image/content"
	"github.com/tripod-dev/tripod/internal/image/layer"
	"github.com/tripod-dev/tripod/internal/image/pull"
)

// Annotations naming an image in an OCI layout: containerd's full name,
// and the spec's ref.name (a tag, or a full reference).
const (
	annotationImageName = "io.containerd.image.name"
	annotationRefName   = "org.opencontainers.image.ref.name"
)

// Archive formats for Export.
const (
	FormatOCI    = "oci"    // a tar of an OCI image layout
	FormatDocker = "docker" // docker save's format (docker-archive)
)

// Import stores the images of an archive read from r: a tar of an OCI
// image layout, or a docker-archive (docker save). Images are named as the
// archive names them. The archive is spooled to the store's disk first,
// since a docker-archive is not readable front to back.
func (s *Service) Import(ctx context.Context, r io.Reader) ([]Image, error) {
	spool, err := os.MkdirTemp(filepath.Join(s.opt.Root, "content", "ingest"), "import-")
	if err != nil {
		return nil, fmt.Errorf("import: %w", content.Classify(err))
	}
	defer os.RemoveAll(spool)
	tarPath := filepath.Join(spool, "archive.tar")
	f, err := os.Create(tarPath)
	if err != nil {
		return nil, fmt.Errorf("import: %w", content.Classify(err))
	}
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("import: spool archive: %w", content.Classify(err))
	}
	kind, err := archiveKind(tarPath)
	if err != nil {
		return nil, err
	}
	switch kind {
	case FormatDocker:
		return s.importDocker(ctx, tarPath)
	default:
		dir := filepath.Join(spool, "layout")
		if err := os.Mkdir(dir, 0o700); err != nil {
			return nil, err
		}
		af, err := os.Open(tarPath)
		if err != nil {
			return nil, err
		}
		// The same hostile-input-safe extraction as layers.
		_, err = layer.Apply(ctx, af, dir, layer.Options{})
		af.Close()
		if err != nil {
			return nil, fmt.Errorf("import: unpack OCI layout: %w", err)
		}
		os.Remove(tarPath)
		return s.importLayout(ctx, dir)
	}
}

// archiveKind tells an OCI layout tar from a docker-archive.
func archiveKind(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", fmt.Errorf("import: not a tar archive: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		switch strings.TrimPrefix(h.Name, "./") {
		case "oci-layout":
			return FormatOCI, nil
		case "manifest.json":
			return FormatDocker, nil
		}
	}
	return "", fmt.Errorf("import: neither an OCI image layout (no oci-layout) nor a docker archive (no manifest.json): %w", errdefs.ErrInvalidArgument)
}

func (s *Service) importDocker(ctx context.Context, path string) ([]Image, error) {
	opener := func() (io.ReadCloser, error) { return os.Open(path) }
	m, err := tarball.LoadManifest(opener)
	if err != nil {
		return nil, fmt.Errorf("import: docker archive manifest: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	var out []Image
	for i, d := range m {
		var tag *name.Tag
		if len(d.RepoTags) > 0 {
			t, err := name.NewTag(d.RepoTags[0])
			if err != nil {
				return out, fmt.Errorf("import: tag %q: %v: %w", d.RepoTags[0], err, errdefs.ErrInvalidArgument)
			}
			tag = &t
		} else if len(m) > 1 {
			return out, fmt.Errorf("import: image %d of the docker archive has no tag: %w", i, errdefs.ErrInvalidArgument)
		}
		img, err := tarball.Image(opener, tag)
		if err != nil {
			return out, fmt.Errorf("import: image %d: %v: %w", i, err, errdefs.ErrInvalidArgument)
		}
		stored, err := s.importImage(ctx, img, nil, d.RepoTags)
		if err != nil {
			return out, err
		}
		out = append(out, stored)
	}
	return out, nil
}

func (s *Service) importLayout(ctx context.Context, dir string) ([]Image, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("import: OCI layout: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("import: OCI layout index: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("import: OCI layout index: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	var out []Image
	for _, desc := range im.Manifests {
		var names []string
		if n := desc.Annotations[annotationImageName]; n != "" {
			names = append(names, n)
		} else if n := desc.Annotations[annotationRefName]; strings.ContainsAny(n, "/:") {
			names = append(names, n)
		}
		var (
			img      v1.Image
			indexRaw []byte
		)
		switch {
		case desc.MediaType.IsImage():
			img, err = idx.Image(desc.Digest)
		case desc.MediaType.IsIndex():
			var child v1.ImageIndex
			child, err = idx.ImageIndex(desc.Digest)
			if err == nil {
				img, indexRaw, err = s.selectFromIndex(child)
			}
		default:
			continue
		}
		if err != nil {
			return out, fmt.Errorf("import: %s: %w", desc.Digest, errdefs.Wrap(errdefs.ErrInvalidArgument, err))
		}
		stored, err := s.importImage(ctx, img, indexRaw, names)
		if err != nil {
			return out, err
		}
		out = append(out, stored)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("import: the layout holds no image: %w", errdefs.ErrInvalidArgument)
	}
	return out, nil
}

func (s *Service) selectFromIndex(idx v1.ImageIndex) (v1.Image, []byte, error) {
	raw, err := idx.RawManifest()
	if err != nil {
		return nil, nil, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, nil, err
	}
	want := s.opt.Platform
	for _, m := range im.Manifests {
		if p := m.Platform; p != nil && m.MediaType.IsImage() && p.OS == want.OS && p.Architecture == want.Architecture &&
			(want.Variant == "" || p.Variant == "" || p.Variant == want.Variant) {
			img, err := idx.Image(m.Digest)
			return img, raw, err
		}
	}
	return nil, nil, fmt.Errorf("no image for %s in the index: %w", want, errdefs.ErrNotFound)
}

// importImage stores one image of an archive under names.
func (s *Service) importImage(ctx context.Context, img v1.Image, indexRaw []byte, names []string) (Image, error) {
	raw, err := img.RawManifest()
	if err != nil {
		return Image{}, fmt.Errorf("import: manifest: %w", errdefs.Wrap(errdefs.ErrInvalidArgument, err))
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return Image{}, fmt.Errorf("import: manifest: %w", errdefs.Wrap(errdefs.ErrInvalidArgument, err))
	}
	mt, _ := img.MediaType()
	md, _, _ := v1.SHA256(bytes.NewReader(raw))
	ms := manifestSet{manifest: raw, manifestDigest: md, mediaType: string(mt), parsed: m}
	top := md
	if indexRaw != nil {
		ms.index = indexRaw
		ms.indexDigest, _, _ = v1.SHA256(bytes.NewReader(indexRaw))
		top = ms.indexDigest
	}
	for _, n := range names {
		r, err := pull.ParseRef(n)
		if err != nil {
			return Image{}, fmt.Errorf("import: %w", err)
		}
		if t := r.TagName(); t != "" {
			ms.names = append(ms.names, t)
		}
		ms.names = append(ms.names, r.DigestName(top.String()))
	}
	label := "import " + md.String()
	if len(names) > 0 {
		label = "import " + names[0]
	}
	stored, err := s.commit(ctx, label, ms, archiveSource{img: img, config: m.Config.Digest})
	if err != nil {
		return Image{}, err
	}
	s.log.Info("imported", "image", stored.ID, "names", names)
	return stored, nil
}

// archiveSource hands out an archived image's blobs.
type archiveSource struct {
	img    v1.Image
	config v1.Hash
}

func (a archiveSource) Blob(_ context.Context, d v1.Hash) (io.ReadCloser, error) {
	if d == a.config {
		raw, err := a.img.RawConfigFile()
		if err != nil {
			return nil, errdefs.Wrap(errdefs.ErrInvalidArgument, err)
		}
		return io.NopCloser(bytes.NewReader(raw)), nil
	}
	l, err := a.img.LayerByDigest(d)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d, errdefs.Wrap(errdefs.ErrInvalidArgument, err))
	}
	return l.Compressed()
}

// Export writes the images refs name to w as an archive of format: a tar
// of an OCI image layout, or a docker-archive. Layers are written exactly
// as stored, so digests are kept.
func (s *Service) Export(ctx context.Context, refs []string, format string, w io.Writer) error {
	if len(refs) == 0 {
		return fmt.Errorf("export: no image named: %w", errdefs.ErrInvalidArgument)
	}
	type named struct {
		img   v1.Image
		names []string
	}
	var imgs []named
	for _, ref := range refs {
		stored, err := s.Lookup(ref)
		if err != nil {
			return fmt.Errorf("export: %w", err)
		}
		img, err := partial.CompressedToImage(storedImage{s: s, img: stored})
		if err != nil {
			return fmt.Errorf("export %s: %w", ref, err)
		}
		names := stored.RepoTags
		// A reference given by name exports under that name.
		if r, err := pull.ParseRef(ref); err == nil && r.TagName() != "" {
			names = []string{r.TagName()}
		}
		imgs = append(imgs, named{img, names})
	}
	switch format {
	case FormatDocker, "":
		refMap := map[name.Reference]v1.Image{}
		for _, n := range imgs {
			if len(n.names) == 0 {
				d, _ := n.img.Digest()
				ref, err := name.NewDigest("unnamed/image@" + d.String())
				if err != nil {
					return err
				}
				refMap[ref] = n.img
			}
			for _, nm := range n.names {
				t, err := name.NewTag(nm)
				if err != nil {
					return fmt.Errorf("export: %q: %w", nm, err)
				}
				refMap[t] = n.img
			}
		}
		if err := tarball.MultiRefWrite(refMap, w); err != nil {
			return fmt.Errorf("export: %w", err)
		}
		return nil
	case FormatOCI:
		dir, err := os.MkdirTemp(filepath.Join(s.opt.Root, "content", "ingest"), "export-")
		if err != nil {
			return fmt.Errorf("export: %w", content.Classify(err))
		}
		defer os.RemoveAll(dir)
		p, err := layout.Write(dir, empty.Index)
		if err != nil {
			return fmt.Errorf("export: %w", err)
		}
		for _, n := range imgs {
			ann := map[string]string{}
			if len(n.names) > 0 {
				ann[annotationImageName] = n.names[0]
				ann[annotationRefName] = n.names[0]
			}
			if err := p.AppendImage(n.img, layout.WithAnnotations(ann)); err != nil {
				return fmt.Errorf("export: %w", err)
			}
		}
		return tarDir(ctx, dir, w)
	}
	return fmt.Errorf("export: format %q: want oci or docker: %w", format, errdefs.ErrInvalidArgument)
}

// storedImage presents a stored image to go-containerregistry's writers.
type storedImage struct {
	s   *Service
	img Image
}

func (si storedImage) RawConfigFile() ([]byte, error) { return si.s.Config(si.img) }

func (si storedImage) MediaType() (types.MediaType, error) {
	return types.MediaType(si.img.MediaType), nil
}

func (si storedImage) RawManifest() ([]byte, error) {
	h, err := v1.NewHash(si.img.Manifest)
	if err != nil {
		return nil, err
	}
	return si.s.content.ReadAll(h)
}

func (si storedImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	for _, l := range si.img.Layers {
		if l.Blob == h.String() {
			return storedLayer{s: si.s, digest: h, size: l.Size, mediaType: types.MediaType(l.MediaType)}, nil
		}
	}
	return nil, fmt.Errorf("image %s has no layer %s: %w", si.img.ID, h, errdefs.ErrNotFound)
}

type storedLayer struct {
	s         *Service
	digest    v1.Hash
	size      int64
	mediaType types.MediaType
}

func (l storedLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l storedLayer) Size() (int64, error)                { return l.size, nil }
func (l storedLayer) MediaType() (types.MediaType, error) { return l.mediaType, nil }
func (l storedLayer) Compressed() (io.ReadCloser, error)  { return l.s.content.Open(l.digest) }

// tarDir writes dir's regular files and directories as a tar stream.
func tarDir(ctx context.Context, dir string, w io.Writer) error {
	tw := tar.NewWriter(w)
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		if !fi.IsDir() && !fi.Mode().IsRegular() {
			return nil
		}
		h, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.IsDir() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return nil
}

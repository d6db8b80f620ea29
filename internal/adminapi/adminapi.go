// Package adminapi is the wire format of tripodd's admin socket, shared by
// the daemon and the tripod CLI (which so need not link the daemon).
package adminapi

import "time"

// Socket is the admin socket's name in tripodd's state directory. It
// serves HTTP, root only (0600):
//
//	GET  /v1/pulls                                   running pulls ([]Progress)
//	POST /v1/images/import                           body: an OCI layout tar or docker-archive ([]ImportedImage)
//	GET  /v1/images/export?format=oci|docker&ref=R   the archive (application/x-tar)
//
// Errors are an Error body with an HTTP status matching its Kind.
const Socket = "admin.sock"

// Progress is one running pull.
type Progress struct {
	Image       string
	Started     time.Time
	TotalBytes  int64
	DoneBytes   int64
	TotalLayers int
	DoneLayers  int
}

// ImportedImage is one image an import stored.
type ImportedImage struct {
	ID       string   `json:"id"`
	RepoTags []string `json:"repoTags"`
}

// Error is the body of a failed call.
type Error struct {
	Error string `json:"error"`
	Kind  string `json:"kind"`
}

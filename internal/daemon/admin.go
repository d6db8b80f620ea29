package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/tripod-dev/tripod/internal/adminapi"
	"github.com/tripod-dev/tripod/internal/errdefs"
	"github.com/tripod-dev/tripod/internal/image"
)

// adminHandler serves what the CRI has no call for (image import and
// export, pull progress) to the tripod CLI; see package adminapi.
func adminHandler(images *image.Service) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/pulls", func(w http.ResponseWriter, r *http.Request) {
		out := []adminapi.Progress{}
		for _, p := range images.Pulls() {
			out = append(out, adminapi.Progress(p))
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("POST /v1/images/import", func(w http.ResponseWriter, r *http.Request) {
		imgs, err := images.Import(r.Context(), r.Body)
		if err != nil {
			writeError(w, err)
			return
		}
		out := []adminapi.ImportedImage{}
		for _, img := range imgs {
			out = append(out, adminapi.ImportedImage{ID: img.ID, RepoTags: img.RepoTags})
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /v1/images/export", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		refs, format := q["ref"], q.Get("format")
		// Check every name before the first byte of the tar goes out,
		// so an unknown image is a clean error, not a cut archive.
		for _, ref := range refs {
			if _, err := images.Lookup(ref); err != nil {
				writeError(w, err)
				return
			}
		}
		if format != "" && format != image.FormatOCI && format != image.FormatDocker {
			writeError(w, errdefs.Wrap(errdefs.ErrInvalidArgument, errors.New("format: want oci or docker")))
			return
		}
		w.Header().Set("Content-Type", "application/x-tar")
		if err := images.Export(r.Context(), refs, format, w); err != nil {
			// Headers are gone: cut the stream so the client sees
			// an error rather than a short archive.
			panic(http.ErrAbortHandler)
		}
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	code, kind := http.StatusInternalServerError, "internal"
	switch {
	case errors.Is(err, context.Canceled):
		code, kind = 499, "canceled"
	default:
		switch errdefs.Kind(err) {
		case errdefs.ErrInvalidArgument:
			code, kind = http.StatusBadRequest, "invalid_argument"
		case errdefs.ErrNotFound:
			code, kind = http.StatusNotFound, "not_found"
		case errdefs.ErrPermissionDenied:
			code, kind = http.StatusForbidden, "permission_denied"
		case errdefs.ErrUnavailable:
			code, kind = http.StatusServiceUnavailable, "unavailable"
		case errdefs.ErrResourceExhausted:
			code, kind = http.StatusInsufficientStorage, "resource_exhausted"
		case errdefs.ErrDataLoss:
			code, kind = http.StatusUnprocessableEntity, "data_loss"
		}
	}
	writeJSON(w, code, adminapi.Error{Error: err.Error(), Kind: kind})
}

#!/bin/bash
# install.sh install|uninstall: what `make install` and `make uninstall` run.
#
# install puts tripod's programs in BINDIR, runc in LIBEXECDIR, the CNI
# plugins in CNIBINDIR, tripod.toml in SYSCONFDIR/tripod (never over an
# existing one) and the systemd units in UNITDIR (written, not enabled),
# all below DESTDIR when staging a package. Every directory it makes and
# every file it writes goes into LIBEXECDIR/manifest, one "KIND PATH" per
# line (d directory, f file, l link, c config with its sha256), paths
# without DESTDIR. uninstall removes exactly those, innermost first: a
# config edited since is kept, as is a directory something else has put
# files in.
set -euo pipefail

: "${DESTDIR:=}" "${PREFIX:=/usr/local}"
: "${BINDIR:=$PREFIX/bin}" "${LIBEXECDIR:=$PREFIX/lib/tripod}"
: "${SYSCONFDIR:=/etc}" "${CNIBINDIR:=/opt/cni/bin}" "${UNITDIR:=$SYSCONFDIR/systemd/system}"
manifest="$LIBEXECDIR/manifest"
here=$(cd "$(dirname "$0")" && pwd)

die() { echo "install.sh: $*" >&2; exit 1; }

install_all() {
	: "${BIN:?BIN: the directory make build filled}" "${RUNC:?RUNC: the runc binary to install}" "${CRICTL:?CRICTL: the crictl binary to install}"
	for p in tripodd tripod tripod-csi tripod-monitor tripod-exec tripod-cni; do
		[ -x "$BIN/$p" ] || die "$BIN/$p missing: run make build"
	done
	[ -x "$RUNC" ] || die "$RUNC missing (make go-tools builds it)"
	[ -x "$CRICTL" ] || die "$CRICTL missing (make go-tools builds it)"

	new=$(mktemp)
	trap 'rm -f "$new"' EXIT
	# A reinstall keeps the directories the first install made (they are
	# still ours to remove) and the record of a config it did not rewrite.
	if [ -f "$DESTDIR$manifest" ]; then
		grep -E '^(d|c) ' "$DESTDIR$manifest" >>"$new" || true
	fi

	mkdirs "$BINDIR"
	for p in tripodd tripod tripod-csi tripod-monitor tripod-exec tripod-cni; do
		put "$BIN/$p" "$BINDIR/$p" 0755
	done
	put "$CRICTL" "$BINDIR/crictl" 0755
	mkdirs "$LIBEXECDIR"
	put "$RUNC" "$LIBEXECDIR/runc" 0755

	# The plugins: tripod-cni plus one link per type. A plugin of the same
	# name that is not tripod's (another suite's bridge, say) is kept.
	"$BIN/tripod" cni install --from "$BIN" --bin-dir "$CNIBINDIR" --destdir "$DESTDIR" --no-config --manifest "$new"

	mkdirs "$SYSCONFDIR/tripod"
	conf="$SYSCONFDIR/tripod/tripod.toml"
	if [ -e "$DESTDIR$conf" ]; then
		echo "kept the existing $DESTDIR$conf"
	else
		render "$here/tripod.toml.in" "$DESTDIR$conf" 0644
		echo "c $(sha "$DESTDIR$conf") $conf" >>"$new"
	fi
	mkdirs "$UNITDIR"
	for u in tripodd tripod-csi; do
		render "$here/$u.service.in" "$DESTDIR$UNITDIR/$u.service" 0644
		echo "f $UNITDIR/$u.service" >>"$new"
	done

	# Every entry once, first occurrence first (directories lead).
	awk '!seen[$0]++' "$new" >"$DESTDIR$manifest.tmp"
	echo "f $manifest" >>"$DESTDIR$manifest.tmp"
	mv "$DESTDIR$manifest.tmp" "$DESTDIR$manifest"
	echo "installed tripod under ${DESTDIR:-/} (manifest $DESTDIR$manifest); systemd units written, not enabled"
}

# mkdirs DIR: make DESTDIR/DIR and its missing parents, recording each.
mkdirs() {
	local d=$1 missing=()
	while [ ! -d "$DESTDIR$d" ]; do
		missing=("$d" "${missing[@]}")
		d=$(dirname "$d")
	done
	for d in "${missing[@]}"; do
		mkdir -m 0755 "$DESTDIR$d"
		echo "d $d" >>"$new"
	done
}

# put SRC DST MODE: install SRC at DESTDIR/DST (written beside, renamed:
# a running binary keeps its old file).
put() {
	install -m "$3" "$1" "$DESTDIR$2.tripod-new"
	mv -f "$DESTDIR$2.tripod-new" "$DESTDIR$2"
	echo "f $2" >>"$new"
}

# render TEMPLATE DST MODE: the template with the install paths filled in.
render() {
	sed -e "s|@BINDIR@|$BINDIR|g" -e "s|@LIBEXECDIR@|$LIBEXECDIR|g" -e "s|@SYSCONFDIR@|$SYSCONFDIR|g" "$1" >"$2.tripod-new"
	chmod "$3" "$2.tripod-new"
	mv -f "$2.tripod-new" "$2"
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

uninstall_all() {
	[ -f "$DESTDIR$manifest" ] || die "no $DESTDIR$manifest: nothing installed there (PREFIX and DESTDIR must match the install's)"
	local entries
	entries=$(tac "$DESTDIR$manifest")
	while read -r kind a b; do
		case $kind in
		f | l) rm -f "$DESTDIR$a" ;;
		c)
			if [ -f "$DESTDIR$b" ] && [ "$(sha "$DESTDIR$b")" != "$a" ]; then
				echo "kept $DESTDIR$b: edited since it was installed"
			else
				rm -f "$DESTDIR$b"
			fi
			;;
		d)
			if ! rmdir "$DESTDIR$a" 2>/dev/null && [ -d "$DESTDIR$a" ]; then
				echo "kept $DESTDIR$a: not empty"
			fi
			;;
		*) die "manifest line: $kind $a $b" ;;
		esac
	done <<<"$entries"
	echo "uninstalled tripod from ${DESTDIR:-/}"
}

case "${1:-}" in
install) install_all ;;
uninstall) uninstall_all ;;
*) die "usage: install.sh install|uninstall" ;;
esac

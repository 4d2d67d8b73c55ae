"""bundle.py - bundles on the client side: which local files make a model or calibration
bundle, their sha256s, and the manifest digest that names the bundle.

DESIGN
The digest rule is the one in the header comment of proto/quantd.proto: files sorted by the
UTF-8 bytes of their names, one line "<sha256>  <size>  <name>\\n" each, and the sha256 of
those lines. It is computed here, before anything is sent, so the client can ask the server
what it already holds of exactly these bytes; quantctl computes the same digest for the same
directory, which is why both clients meet the same blobs and the same cache entries.
This module needs no gRPC, so it can be used (and tested) on its own.
"""
import hashlib
import os
import stat

HASH_BLOCK = 1 << 20
MAX_FILES = 100000  # as quantctl: a mistaken path (a home directory) fails fast


class BundleFile:
    """One file of a bundle: its name in the manifest, local path, size and sha256."""

    __slots__ = ("name", "path", "size", "sha256")

    def __init__(self, name, path, size, sha256=""):
        self.name = name
        self.path = path
        self.size = size
        self.sha256 = sha256

    def __repr__(self):
        return "BundleFile(%r, size=%d, sha256=%r)" % (self.name, self.size, self.sha256)


class Bundle:
    """A scanned and hashed bundle: files sorted by name, and the manifest digest."""

    def __init__(self, root, files):
        self.root = root
        self.files = files
        self.total_bytes = sum(f.size for f in files)
        self.digest = manifest_digest(files)

    def __repr__(self):
        return "Bundle(%r, %d files, %d bytes, digest=%s)" % (
            self.root, len(self.files), self.total_bytes, self.digest)


def check_name(name, what="file"):
    """Raise ValueError unless name obeys the manifest rules of proto/quantd.proto."""
    if not name:
        raise ValueError("%s: empty name" % what)
    if any(c in name for c in "\r\n\\\0"):
        raise ValueError("%s '%s': a bundle name may not hold NUL, CR, LF or a backslash"
                         % (what, name))
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise ValueError("%s '%s': a name's parts may not be empty, '.' or '..'"
                             % (what, name))
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError("%s %r: not valid UTF-8" % (what, name)) from e


def sort_key(name):
    """memcmp order of the UTF-8 bytes, as the manifest rule asks (not Python's str order,
    which differs for characters outside the BMP)."""
    return name.encode("utf-8")


def manifest_lines(files):
    """The bytes the manifest digest hashes. files: sorted, with sha256 and size set."""
    out = []
    for f in files:
        out.append("%s  %d  %s\n" % (f.sha256, f.size, f.name))
    return "".join(out).encode("utf-8")


def manifest_digest(files):
    """The manifest digest of files (objects with name, size, sha256), sorted here."""
    ordered = sorted(files, key=lambda f: sort_key(f.name))
    return hashlib.sha256(manifest_lines(ordered)).hexdigest()


def sha256_file(path, progress=None):
    """(lowercase hex sha256, size) of the file at path."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(HASH_BLOCK)
            if not block:
                break
            h.update(block)
            size += len(block)
            if progress:
                progress(len(block))
    return h.hexdigest(), size


def scan(path):
    """The files of a bundle at path, sorted, sizes read, nothing hashed.

    A directory gives every regular file under it, recursively, named relative to it;
    symbolic links to regular files count, other links, sockets and devices do not (as
    quantctl). A regular file gives a one-file bundle holding it under its base name.
    """
    st = os.stat(path)
    if stat.S_ISREG(st.st_mode):
        name = os.path.basename(os.path.normpath(path))
        check_name(name)
        return [BundleFile(name, path, st.st_size)]
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError("%s: neither a directory nor a regular file" % path)
    files = []
    stack = [""]
    while stack:
        rel = stack.pop()
        here = os.path.join(path, rel) if rel else path
        with os.scandir(here) as it:
            for de in it:
                name = rel + "/" + de.name if rel else de.name
                if de.is_dir(follow_symlinks=False):
                    stack.append(name)
                    continue
                try:
                    fst = os.stat(de.path)  # follows a link to a regular file
                except FileNotFoundError:
                    continue  # a dangling link is no file of the bundle
                if not stat.S_ISREG(fst.st_mode):
                    continue
                check_name(name)
                files.append(BundleFile(name, de.path, fst.st_size))
                if len(files) > MAX_FILES:
                    raise ValueError("%s: more than %d files; is this the model directory?"
                                     % (path, MAX_FILES))
    if not files:
        raise ValueError("%s: no regular files to send" % path)
    files.sort(key=lambda f: sort_key(f.name))
    return files


def load(path, progress=None):
    """Scan and hash the bundle at path. progress(n) sees every block hashed."""
    files = scan(path)
    for f in files:
        f.sha256, size = sha256_file(f.path, progress)
        if size != f.size:
            raise ValueError("%s: changed while it was read (%d bytes, then %d)"
                             % (f.path, f.size, size))
    return Bundle(path, files)

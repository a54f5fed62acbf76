"""Downloads that survive bad networks: resume (HTTP Range), size and checksum checks, progress on stderr.

A file is streamed into `<dest>.part`; only a complete, verified download is renamed to `dest`, so the
final name never holds a partial or corrupt file. Running again resumes a `.part` left by a cut.

Also the commands behind the shell scripts (python -m loranlg.download --help):
  checkpoints [sm|md|lg|all]   GPT-2 weights + vocabulary from the Hugging Face hub into pretrained_checkpoints/
  vocab                        only the vocabulary (vocab.json + merges.txt)
  raw --dest F ...             one raw dataset file: kept if present, else copied from a directory, else downloaded
"""

import hashlib
import http.client
import os
import re
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request

from . import flags
from .errors import InputError, run_cli
from .progress import Progress
from .tokenizer import VOCAB_FILE_PAIRS

HUB_URL_VARIABLE = "LORANLG_HUB_URL"
DEFAULT_HUB_URL = "https://huggingface.co"
CHUNK_BYTES = 1 << 20
USER_AGENT = "loranlg-download/1"


class DownloadError(InputError):
    """A download that could not be completed or verified; `hint` says what to do instead."""

    def __init__(self, message, path=None, line=None, hint=None):
        super().__init__(message, path, line)
        self.hint = hint

    def __str__(self):
        text = super().__str__()
        return f"{text}\n{self.hint}" if self.hint else text


# ---------------------------------------------------------------------------------------------- checksums

def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def git_blob_sha1(path):
    """The hash git (and the hub's ETag for files not stored in LFS) gives a file's content."""
    digest = hashlib.sha1()
    digest.update(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_from_etag(etag):
    """('sha256' | 'git-sha1', hex) when a hub ETag names the content's hash, else None."""
    if not etag:
        return None
    value = etag.strip()
    if value.startswith("W/"):
        value = value[2:]
    value = value.strip('"').lower()
    if re.fullmatch(r"[0-9a-f]{64}", value):
        return "sha256", value
    if re.fullmatch(r"[0-9a-f]{40}", value):
        return "git-sha1", value
    return None


def verify_checksum(path, kind, expected):
    actual = file_sha256(path) if kind == "sha256" else git_blob_sha1(path)
    return actual == expected.lower(), actual


# ---------------------------------------------------------------------------------------------- progress

def download_progress(name, total, done):
    """A line on stderr: redrawn in place on a terminal, a line every 10% otherwise."""
    def text(progress):
        rate = progress.rate() / 1e6
        size = f"{progress.done / 1e6:.1f}/{total / 1e6:.1f} MB" if total else f"{progress.done / 1e6:.1f} MB"
        percent = f"{100 * progress.done / total:5.1f}% " if total else ""
        return f"  {name}: {percent}{size} {rate:.1f} MB/s"

    return Progress(total, text, done, every_tenth=True)


# ---------------------------------------------------------------------------------------------- HTTP

class _RecordingRedirects(urllib.request.HTTPRedirectHandler):
    """Keeps the headers of redirect responses: the hub puts X-Linked-Etag / X-Linked-Size on its 302."""

    def __init__(self):
        super().__init__()
        self.headers = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.headers.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _header(responses, name):
    """The first value of header `name` over the redirect chain and the final response."""
    for headers in responses:
        value = headers.get(name)
        if value:
            return value
    return None


def _content_range(value):
    """(start, total) of a 'bytes start-end/total' or 'bytes */total' header; None parts when absent."""
    match = re.fullmatch(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", (value or "").strip())
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return start, total


def _offline_hint(url, dest):
    return f"Fetch it by hand from {url} and put it at {dest}."


def _open(url, offset, timeout):
    """Open `url` from byte `offset`; returns (response, headers of redirects + final response)."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    redirects = _RecordingRedirects()
    opener = urllib.request.build_opener(redirects)
    response = opener.open(request, timeout=timeout)
    return response, redirects.headers + [response.headers]


class _Cut(Exception):
    """The connection broke mid-body; the .part file keeps what arrived."""


def _stream_into(response, part, append, progress):
    mode = "ab" if append else "wb"
    received = 0
    with open(part, mode) as out:
        while True:
            try:
                block = response.read(CHUNK_BYTES)
            except (http.client.IncompleteRead, ConnectionError, socket.timeout, OSError) as err:
                raise _Cut(str(err) or type(err).__name__) from None
            if not block:
                return received
            out.write(block)
            received += len(block)
            if progress:
                progress.advance(len(block))


def _transfer_once(url, dest, part, timeout, show_progress):
    """One HTTP attempt, resuming from the .part file. Returns (total size or None, response headers)."""
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    try:
        response, headers = _open(url, offset, timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            # Range past the end: the .part may already be whole; the total decides.
            _, total = _content_range(err.headers.get("Content-Range"))
            err.close()
            if total == offset:
                return total, [err.headers]
            os.unlink(part)
            raise _Cut("the partial file does not match the server's; starting over") from None
        err.close()
        raise DownloadError(f"the server answered HTTP {err.code} ({err.reason}) for {url}",
                            hint=_offline_hint(url, dest)) from None
    except (urllib.error.URLError, socket.timeout, ConnectionError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"cannot reach {url} ({reason})", hint=_offline_hint(url, dest)) from None
    with response:
        append = False
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        total = length
        if offset and response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                os.unlink(part)
                raise _Cut("the server resumed at the wrong place; starting over")
            append = True
            print(f"  resuming {os.path.basename(dest)} at {offset / 1e6:.1f} MB", file=sys.stderr)
        elif offset:
            print(f"  the server cannot resume; downloading {os.path.basename(dest)} again", file=sys.stderr)
        linked_size = _header(headers, "X-Linked-Size")
        if total is None and linked_size and linked_size.isdigit():
            total = int(linked_size)
        done = offset if append else 0
        progress = download_progress(os.path.basename(dest), total, done) if show_progress else None
        try:
            received = _stream_into(response, part, append, progress)
        finally:
            if progress:
                progress.finish()
        if length is not None and received < length:
            # http.client returns a short body without raising when the server closes early.
            raise _Cut(f"got {received} of {length} bytes")
        return total, headers


def download(url, dest, *, size=None, sha256=None, hub_etag=False, verify=None, retries=5, timeout=60,
             show_progress=True):
    """Download `url` to `dest` via `dest.part`, resuming after cuts; rename only once verified.

    size / sha256: what the file must be (when known). hub_etag: also accept the Hugging Face hub's
    X-Linked-Etag / ETag as the content hash (sha256 for LFS files, git's blob sha1 otherwise).
    verify(path): an extra check of the finished .part; returns an error message or None.
    """
    dest = os.fspath(dest)
    part = dest + ".part"
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    attempt = 0
    while True:
        try:
            total, headers = _transfer_once(url, dest, part, timeout, show_progress)
            break
        except _Cut as cut:
            attempt += 1
            if attempt > retries:
                raise DownloadError(f"the connection to {url} kept breaking ({cut})",
                                    hint=f"Run the command again to resume from {part}. "
                                         + _offline_hint(url, dest)) from None
            print(f"  connection lost ({cut}); retrying ({attempt}/{retries})", file=sys.stderr)
            time.sleep(min(0.2 * attempt, 2.0))

    got = os.path.getsize(part)
    for expected, what in ((total, "the server announced"), (size, "expected")):
        if expected is not None and got != expected:
            os.unlink(part)
            raise DownloadError(f"{url} gave {got} bytes but {what} {expected}; the partial file was removed, "
                                "run the command again")
    checks = []
    if sha256:
        checks.append(("sha256", sha256))
    if hub_etag:
        # Only the hub's own answer (the first one) names the content hash; a CDN's ETag may not.
        etag = checksum_from_etag(_header(headers, "X-Linked-Etag") or headers[0].get("ETag"))
        if etag and etag not in checks:
            checks.append(etag)
    for kind, expected in checks:
        ok, actual = verify_checksum(part, kind, expected)
        if not ok:
            os.unlink(part)
            raise DownloadError(f"{url} arrived corrupt: its {kind} is {actual}, expected {expected}; the file "
                                "was removed, run the command again")
    problem = verify(part) if verify else None
    if problem:
        os.unlink(part)
        raise DownloadError(f"{url}: {problem}; the file was removed")
    os.replace(part, dest)
    return dest


# ---------------------------------------------------------------------------------------------- GPT-2 from the hub

# size key -> (hub repository, the original's file-name prefix)
GPT2_CARDS = {
    "sm": ("openai-community/gpt2", "gpt2"),
    "md": ("openai-community/gpt2-medium", "gpt2-medium"),
    "lg": ("openai-community/gpt2-large", "gpt2-large"),
}
VOCAB_REPO = "openai-community/gpt2"  # the three sizes share one vocabulary
VOCAB_FILES = ("vocab.json", "merges.txt")
WEIGHT_FILES = {"bin": ("pytorch_model.bin", "{prefix}-pytorch_model.bin"),
                "safetensors": ("model.safetensors", "{prefix}-model.safetensors")}


def hub_url(repo, filename, base=None):
    base = (base or os.environ.get(HUB_URL_VARIABLE) or os.environ.get("HF_ENDPOINT") or DEFAULT_HUB_URL)
    return f"{base.rstrip('/')}/{repo}/resolve/main/{filename}"


def has_vocabulary(directory):
    """Whether `directory` holds a GPT-2 vocabulary in either naming (tokenizer.VOCAB_FILE_PAIRS)."""
    return any(all(os.path.isfile(os.path.join(directory, name)) for name in pair) for pair in VOCAB_FILE_PAIRS)


def checkpoint_plan(sizes, out_dir, weight_format="bin", base=None, vocab_dir=None):
    """[(url, dest)] for the vocabulary (into vocab_dir, default out_dir; none when one is there already, under
    either naming) and the weights of `sizes` (keys of GPT2_CARDS)."""
    vocab_dir = vocab_dir or out_dir
    plan = [] if has_vocabulary(vocab_dir) else [(hub_url(VOCAB_REPO, name, base), os.path.join(vocab_dir, name))
                                                 for name in VOCAB_FILES]
    hub_name, local_name = WEIGHT_FILES[weight_format]
    for size in sizes:
        repo, prefix = GPT2_CARDS[size]
        plan.append((hub_url(repo, hub_name, base), os.path.join(out_dir, local_name.format(prefix=prefix))))
    return plan


def download_checkpoints(sizes, out_dir, weight_format="bin", force=False, base=None, timeout=60, vocab_dir=None):
    plan = checkpoint_plan(sizes, out_dir, weight_format, base, vocab_dir)
    for index, (url, dest) in enumerate(plan):
        if os.path.isfile(dest) and not force:
            print(f"{dest}: already there, kept (--force downloads it again)", file=sys.stderr)
            continue
        print(f"{url} -> {dest}", file=sys.stderr)
        try:
            download(url, dest, hub_etag=True, timeout=timeout)
        except DownloadError as err:
            missing = [f"  {u}\n    -> {d}" for u, d in plan[index:] if not os.path.isfile(d)]
            raise DownloadError(err.message, hint=f"Still missing (fetch each by hand to the "
                                f"path shown, or set {HUB_URL_VARIABLE} to a mirror):\n"
                                + "\n".join(missing)) from None
    return [dest for _, dest in plan]


# ---------------------------------------------------------------------------------------------- raw data files

def count_lines(path):
    with open(path, "rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(CHUNK_BYTES), b""))


def _raw_file_problem(path, lines, sha256):
    if lines is not None:
        found = count_lines(path)
        if found != lines:
            return f"has {found} lines, expected {lines}"
    if sha256:
        actual = file_sha256(path)
        if actual != sha256.lower():
            return f"has sha256 {actual}, expected {sha256}"
    return None


def fetch_raw(dest, url=None, source_dir=None, lines=None, sha256=None, timeout=60):
    """Make sure raw file `dest` exists: keep it, else copy it from `source_dir`, else download `url`.

    A copied or downloaded file must have `lines` lines and the `sha256` when given; a file already at
    `dest` is the user's and only gets a warning when its line count differs.
    """
    name = os.path.basename(dest)
    if os.path.isfile(dest):
        problem = _raw_file_problem(dest, lines, sha256)
        if problem and sha256:
            raise DownloadError(f"{problem}; replace it with the right file or delete it", dest)
        if problem:
            print(f"warning: {dest} {problem} (kept: it is yours)", file=sys.stderr)
        return "kept"
    if source_dir and os.path.isfile(os.path.join(source_dir, name)):
        source = os.path.join(source_dir, name)
        problem = _raw_file_problem(source, lines, sha256)
        if problem:
            raise DownloadError(f"{problem}; not copied", source)
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
        part = dest + ".part"
        shutil.copyfile(source, part)
        os.replace(part, dest)
        print(f"{source} -> {dest}", file=sys.stderr)
        return "copied"
    if not url:
        raise DownloadError(f"missing, and no {name} in {source_dir or '(no source directory given)'}", dest,
                            hint=f"Put {name} at {dest}, or give a folder holding it.")
    print(f"{url} -> {dest}", file=sys.stderr)
    try:
        download(url, dest, sha256=sha256, timeout=timeout,
                 verify=lambda part: _raw_file_problem(part, lines, None))
    except DownloadError as err:
        searched = f" (not in {source_dir} either)" if source_dir else ""
        raise DownloadError(f"missing{searched}, and the download failed: {err.message}", dest,
                            hint=f"Provide it by hand: download {url} to {dest}, or give a folder holding "
                                 f"{name} (create_datasets.sh: --from DIR, or <DATASET>_SOURCE_DIR).") from None
    return "downloaded"


# ---------------------------------------------------------------------------------------------- command line

def main(argv=None):
    parser = flags.Parser(prog="python -m loranlg.download",
                          description="Download GPT-2 checkpoints or raw dataset files, resumably "
                                      "and verified (a .part file holds an unfinished download).")
    commands = parser.add_subparsers(dest="command", required=True)

    ckpt = commands.add_parser("checkpoints", help="GPT-2 weights and vocabulary from the Hugging Face hub",
                               description="GPT-2 weights (saved under the original's names, e.g. "
                                           "gpt2-medium-pytorch_model.bin) and vocab.json + merges.txt. The hub "
                                           f"address comes from ${HUB_URL_VARIABLE} (default {DEFAULT_HUB_URL}).")
    ckpt.add_argument("sizes", nargs="*", metavar="{sm,md,lg,all}",
                      help="which models: sm (124M), md (355M), lg (774M) or all (the default)")
    ckpt.add_argument("--dir", default="pretrained_checkpoints", help="where to put them (default %(default)s)")
    ckpt.add_argument("--format", choices=sorted(WEIGHT_FILES), default="bin",
                      help="bin: the hub's pytorch_model.bin (the original's format, default); safetensors: "
                           "model.safetensors, saved as <model>-model.safetensors")
    ckpt.add_argument("--vocab_dir", default=None,
                      help="where the vocabulary goes (default: --dir); nothing is fetched when it holds one already "
                           "(encoder.json + vocab.bpe, or vocab.json + merges.txt)")
    ckpt.add_argument("--force", action="store_true", help="download files that are already there again")
    ckpt.add_argument("--timeout", type=flags.positive, default=60, help="seconds without data before a retry (default 60)")

    vocab = commands.add_parser("vocab", help="only the GPT-2 vocabulary (vocab.json + merges.txt, 1.5 MB)",
                                description="vocab.json + merges.txt of openai-community/gpt2 from the hub "
                                            f"(${HUB_URL_VARIABLE} overrides {DEFAULT_HUB_URL}).")
    vocab.add_argument("--dir", default="pretrained_checkpoints", help="where to put them (default %(default)s)")
    vocab.add_argument("--timeout", type=flags.positive, default=60, help="seconds without data before a retry (default 60)")

    raw = commands.add_parser("raw", help="one raw dataset file",
                              description="Keep DEST if it exists; else copy it from --from; else download --url.")
    raw.add_argument("--dest", required=True, help="where the file must end up, e.g. data/e2e/train.txt")
    raw.add_argument("--url", help="where to download it from when it is neither there nor in --from")
    raw.add_argument("--from", dest="source_dir", help="a directory holding a file of the same name to copy")
    raw.add_argument("--lines", type=flags.positive_int, help="the number of lines a copied or downloaded file must have")
    raw.add_argument("--sha256", help="the sha256 the file must have (checked on every source)")
    raw.add_argument("--timeout", type=flags.positive, default=60, help="seconds without data before a retry (default 60)")

    args = parser.parse_args(argv)
    try:
        _run_command(parser, ckpt, args)
    except OSError as err:  # a folder we cannot create or write into
        raise InputError(f"cannot write: {err.strerror}", err.filename) from None
    return 0


def _run_command(parser, ckpt, args):
    if args.command == "checkpoints":
        unknown = [size for size in args.sizes if size not in (*GPT2_CARDS, "all")]
        if unknown:
            ckpt.error(f"unknown model size {unknown[0]!r}; choose from sm, md, lg, all")
        sizes = list(GPT2_CARDS) if not args.sizes or "all" in args.sizes else list(dict.fromkeys(args.sizes))
        download_checkpoints(sizes, args.dir, args.format, args.force, timeout=args.timeout, vocab_dir=args.vocab_dir)
    elif args.command == "vocab":
        download_checkpoints([], args.dir, timeout=args.timeout)
    else:
        fetch_raw(args.dest, args.url, args.source_dir, args.lines, args.sha256, args.timeout)


if __name__ == "__main__":
    run_cli(main)

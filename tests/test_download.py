"""Downloads against a real HTTP server on 127.0.0.1 serving files made here: no other network."""

import contextlib
import hashlib
import http.server
import os
import socket
import subprocess
import threading

import pytest

from conftest import run_script
from loranlg.download import DownloadError, download, fetch_raw


class FileServer:
    """Serves `files` (url path -> bytes) with Range support; can cut bodies, lie about ETags, redirect."""

    def __init__(self):
        self.files = {}
        self.etags = {}         # path -> ETag header value
        self.linked = {}        # path -> (target path, X-Linked-Etag): answered with a 302 like the hub
        self.cuts = {}          # path -> how many more GETs to cut after half the body
        self.ignore_range = False
        self.requests = []      # (path, Range header or None)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                if self.path in server.linked:
                    target, etag = server.linked[self.path]
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.send_header("X-Linked-Etag", f'"{etag}"')
                    self.send_header("X-Linked-Size", str(len(server.files[target])))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                ranged = self.headers.get("Range")
                if ranged and not server.ignore_range:
                    start = int(ranged.split("=")[1].rstrip("-"))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                if self.path in server.etags:
                    self.send_header("ETag", server.etags[self.path])
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if server.cuts.get(self.path, 0) > 0:
                    server.cuts[self.path] -= 1
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = FileServer()
    yield srv
    srv.close()


def closed_port():
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def payload(size, seed=0):
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32) + b"tail"


def git_hash_object(path):
    """git's own blob hash, the hub's ETag for files not in LFS."""
    return subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True).stdout.strip()


def test_success_with_progress(server, tmp_path, capsys):
    body = payload(300_000)
    server.files["/f.bin"] = body
    dest = tmp_path / "sub" / "f.bin"
    download(server.url + "/f.bin", dest, timeout=5)
    assert dest.read_bytes() == body
    assert not (tmp_path / "sub" / "f.bin.part").exists()
    assert "100.0%" in capsys.readouterr().err


def test_resume_after_a_cut(server, tmp_path):
    body = payload(400_000)
    server.files["/f.bin"] = body
    server.cuts["/f.bin"] = 1
    dest = tmp_path / "f.bin"
    download(server.url + "/f.bin", dest, sha256=hashlib.sha256(body).hexdigest(), timeout=5)
    assert dest.read_bytes() == body
    assert server.requests[0] == ("/f.bin", None)
    assert server.requests[1][1] == f"bytes={len(body) // 2}-"  # resumed where the cut left it, not from 0
    assert len(server.requests) == 2


def test_resume_a_part_file_left_by_an_earlier_run(server, tmp_path):
    body = payload(100_000)
    server.files["/f.bin"] = body
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(body[:12345])
    download(server.url + "/f.bin", dest, timeout=5)
    assert dest.read_bytes() == body
    assert server.requests == [("/f.bin", "bytes=12345-")]


def test_a_complete_part_file_is_finished_without_refetching(server, tmp_path):
    body = payload(50_000)
    server.files["/f.bin"] = body
    (tmp_path / "f.bin.part").write_bytes(body)
    download(server.url + "/f.bin", tmp_path / "f.bin", sha256=hashlib.sha256(body).hexdigest(), timeout=5)
    assert (tmp_path / "f.bin").read_bytes() == body


def test_server_without_range_support_restarts(server, tmp_path):
    body = payload(60_000)
    server.files["/f.bin"] = body
    server.ignore_range = True
    (tmp_path / "f.bin.part").write_bytes(b"garbage that must not stay in front")
    download(server.url + "/f.bin", tmp_path / "f.bin", timeout=5)
    assert (tmp_path / "f.bin").read_bytes() == body


def test_cut_every_time_gives_up_and_keeps_the_part_for_later(server, tmp_path):
    body = payload(200_000)
    server.files["/f.bin"] = body
    server.cuts["/f.bin"] = 100
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError) as err:
        download(server.url + "/f.bin", dest, retries=2, timeout=5)
    assert "kept breaking" in str(err.value) and "resume" in str(err.value)
    assert not dest.exists()
    part = tmp_path / "f.bin.part"
    assert 0 < part.stat().st_size < len(body) and body.startswith(part.read_bytes())
    server.cuts["/f.bin"] = 0
    download(server.url + "/f.bin", dest, timeout=5)  # a later run finishes it
    assert dest.read_bytes() == body


def test_corrupt_file_rejected_by_the_hub_etag(server, tmp_path):
    server.files["/f.bin"] = payload(80_000)
    server.etags["/f.bin"] = '"' + hashlib.sha256(b"something else").hexdigest() + '"'
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError) as err:
        download(server.url + "/f.bin", dest, hub_etag=True, timeout=5)
    assert "corrupt" in str(err.value) and "sha256" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_file_rejected_by_a_given_sha256(server, tmp_path):
    server.files["/f.bin"] = payload(10_000)
    with pytest.raises(DownloadError):
        download(server.url + "/f.bin", tmp_path / "f.bin", sha256="ab" * 32, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_git_sha1_etag_accepted_and_checked(server, tmp_path):
    body = payload(20_000)
    reference = tmp_path / "reference"
    reference.write_bytes(body)
    server.files["/merges.txt"] = body
    server.etags["/merges.txt"] = '"' + git_hash_object(reference) + '"'
    download(server.url + "/merges.txt", tmp_path / "ok.txt", hub_etag=True, timeout=5)
    assert (tmp_path / "ok.txt").read_bytes() == body
    server.etags["/merges.txt"] = '"' + "0" * 40 + '"'
    with pytest.raises(DownloadError):
        download(server.url + "/merges.txt", tmp_path / "bad.txt", hub_etag=True, timeout=5)
    assert not (tmp_path / "bad.txt").exists()


def test_wrong_size_rejected(server, tmp_path):
    server.files["/f.bin"] = payload(10_000)
    with pytest.raises(DownloadError) as err:
        download(server.url + "/f.bin", tmp_path / "f.bin", size=999, timeout=5)
    assert "expected 999" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_server_down_is_a_clear_error(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/f.bin"
    with pytest.raises(DownloadError) as err:
        download(url, tmp_path / "f.bin", timeout=5)
    message = str(err.value)
    assert "cannot reach" in message and url in message and "by hand" in message and str(tmp_path / "f.bin") in message
    assert list(tmp_path.iterdir()) == []


def test_http_error_is_a_clear_error(server, tmp_path):
    with pytest.raises(DownloadError) as err:
        download(server.url + "/missing.bin", tmp_path / "m.bin", timeout=5)
    assert "HTTP 404" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_fetch_raw_downloads_and_checks_lines(server, tmp_path):
    server.files["/e2e/valid.txt"] = b"a||b\n" * 7
    dest = tmp_path / "valid.txt"
    with pytest.raises(DownloadError) as err:
        fetch_raw(str(dest), server.url + "/e2e/valid.txt", lines=8, timeout=5)
    assert "has 7 lines, expected 8" in str(err.value)
    assert list(tmp_path.iterdir()) == []
    assert fetch_raw(str(dest), server.url + "/e2e/valid.txt", lines=7, timeout=5) == "downloaded"
    assert fetch_raw(str(dest), server.url + "/e2e/valid.txt", lines=7, timeout=5) == "kept"
    assert len(server.requests) == 2


# ------------------------------------------------------------------------------------- the shell scripts

def hub_layout(server, files):
    """Serve `files` (repo/filename -> bytes) like the hub: a 302 carrying X-Linked-Etag to a content address."""
    for name, body in files.items():
        digest = hashlib.sha256(body).hexdigest()
        target = f"/cdn/{digest}"
        server.files[target] = body
        server.linked[f"/{name.split('/', 2)[0]}/{name.split('/', 2)[1]}/resolve/main/{name.split('/', 2)[2]}"] = \
            (target, digest)


def test_download_checkpoints_script(server, tmp_path):
    files = {"openai-community/gpt2/vocab.json": b'{"a": 0}', "openai-community/gpt2/merges.txt": b"#version\n",
             "openai-community/gpt2/pytorch_model.bin": payload(150_000, 1),
             "openai-community/gpt2-medium/pytorch_model.bin": payload(250_000, 2)}
    hub_layout(server, files)
    server.cuts["/cdn/" + hashlib.sha256(files["openai-community/gpt2-medium/pytorch_model.bin"]).hexdigest()] = 1
    out = tmp_path / "ckpt"
    proc = run_script("download_pretrained_checkpoints.sh", "sm", "md", "--dir", out,
                      env={"LORANLG_HUB_URL": server.url})
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ["gpt2-medium-pytorch_model.bin", "gpt2-pytorch_model.bin",
                                       "merges.txt", "vocab.json"]
    assert (out / "gpt2-medium-pytorch_model.bin").read_bytes() == files["openai-community/gpt2-medium/pytorch_model.bin"]
    assert "resuming" in proc.stderr
    asked = len(server.requests)
    proc = run_script("download_pretrained_checkpoints.sh", "sm", "--dir", out, env={"LORANLG_HUB_URL": server.url})
    assert proc.returncode == 0 and len(server.requests) == asked  # present files are kept, nothing fetched


def test_download_checkpoints_puts_the_vocabulary_in_vocab_dir(server, tmp_path):
    """VOCAB_DIR is honoured: the vocabulary goes there, and is not fetched when it is there in either naming."""
    files = {"openai-community/gpt2/vocab.json": b'{"a": 0}', "openai-community/gpt2/merges.txt": b"#version\n",
             "openai-community/gpt2/pytorch_model.bin": payload(10_000, 4)}
    hub_layout(server, files)
    out, vocab = tmp_path / "ckpt", tmp_path / "vocab"
    proc = run_script("download_pretrained_checkpoints.sh", "sm", "--dir", out, "--vocab_dir", vocab,
                      env={"LORANLG_HUB_URL": server.url})
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ["gpt2-pytorch_model.bin"]
    assert sorted(os.listdir(vocab)) == ["merges.txt", "vocab.json"]
    original = tmp_path / "original"  # the original's names: encoder.json + vocab.bpe
    original.mkdir()
    (original / "encoder.json").write_bytes(b"{}")
    (original / "vocab.bpe").write_bytes(b"#")
    asked = len(server.requests)
    proc = run_script("download_pretrained_checkpoints.sh", "sm", "--dir", out, "--vocab_dir", original,
                      env={"LORANLG_HUB_URL": server.url})
    assert proc.returncode == 0 and len(server.requests) == asked
    assert sorted(os.listdir(original)) == ["encoder.json", "vocab.bpe"]


def test_download_checkpoints_script_rejects_a_corrupt_weight_file(server, tmp_path):
    files = {"openai-community/gpt2/vocab.json": b"{}", "openai-community/gpt2/merges.txt": b"#",
             "openai-community/gpt2-large/pytorch_model.bin": payload(30_000, 3)}
    hub_layout(server, files)
    path = "/openai-community/gpt2-large/resolve/main/pytorch_model.bin"
    target, _ = server.linked[path]
    server.linked[path] = (target, "f" * 64)
    out = tmp_path / "ckpt"
    proc = run_script("download_pretrained_checkpoints.sh", "lg", "--dir", out, env={"LORANLG_HUB_URL": server.url})
    assert proc.returncode != 0 and "corrupt" in proc.stderr
    assert sorted(os.listdir(out)) == ["merges.txt", "vocab.json"]


def test_download_checkpoints_script_offline(tmp_path):
    proc = run_script("download_pretrained_checkpoints.sh", "md", "--dir", tmp_path / "ckpt",
                      env={"LORANLG_HUB_URL": f"http://127.0.0.1:{closed_port()}"})
    assert proc.returncode != 0
    assert "cannot reach" in proc.stderr and "openai-community/gpt2-medium/resolve/main/pytorch_model.bin" in proc.stderr
    assert str(tmp_path / "ckpt" / "gpt2-medium-pytorch_model.bin") in proc.stderr
    assert not any((tmp_path / "ckpt").glob("*.bin"))


def test_create_datasets_downloads_a_missing_split(server, shared_dir, vocab_dir, tmp_path):
    server.files["/data/e2e/valid.txt"] = (shared_dir / "data" / "e2e" / "valid.txt").read_bytes()
    proc = run_script("create_datasets.sh", "--splits", "valid", "--vocab", vocab_dir, "--data", tmp_path,
                      env={"LORANLG_DATA_URL": server.url})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "e2e" / "valid.txt").read_bytes() == server.files["/data/e2e/valid.txt"]
    assert len((tmp_path / "e2e" / "valid.jsonl").read_text().splitlines()) == 4672


def test_create_datasets_fetches_a_missing_vocabulary(server, shared_dir, vocab_dir, tmp_path):
    hub_layout(server, {"openai-community/gpt2/vocab.json": (vocab_dir / "encoder.json").read_bytes(),
                        "openai-community/gpt2/merges.txt": (vocab_dir / "vocab.bpe").read_bytes()})
    vocab = tmp_path / "vocab"
    proc = run_script("create_datasets.sh", "--splits", "valid", "--from", shared_dir / "data", "--vocab", vocab,
                      "--data", tmp_path / "data", env={"LORANLG_HUB_URL": server.url})
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(vocab)) == ["merges.txt", "vocab.json"]
    first = (tmp_path / "data" / "e2e" / "valid.jsonl").read_text().splitlines()[0]
    assert first.startswith('{"context": [3672, 1058, 978, 3681, 388, ')

"""Download CLI against a local threaded HTTP server (no internet here)."""

import functools
import hashlib
import http.server
import io
import pathlib
import socket
import threading
import zipfile

import numpy as np
import pytest
import tifffile

from configs import default
from tests import data_helpers
from unet_jax import data_tool, datasets, download
from unet_jax.errors import UserInputError


class RangeHandler(http.server.SimpleHTTPRequestHandler):
  """Static files with HTTP Range support; records the Range headers it saw."""
  ranges: list = []

  def log_message(self, *args):  # keep pytest output quiet
    pass

  def do_GET(self):  # pylint: disable=invalid-name
    path = pathlib.Path(self.translate_path(self.path))
    if not path.is_file():
      self.send_error(404)
      return
    body = path.read_bytes()
    spec = self.headers.get("Range")
    type(self).ranges.append(spec)
    start = int(spec.split("=")[1].rstrip("-")) if spec else 0
    self.send_response(206 if spec else 200)
    self.send_header("Content-Length", str(len(body) - start))
    self.end_headers()
    self.wfile.write(body[start:])


@pytest.fixture
def server(tmp_path):
  """(folder served, base URL) on 127.0.0.1, random port."""
  root = tmp_path / "served"
  root.mkdir()
  RangeHandler.ranges = []
  httpd = http.server.ThreadingHTTPServer(
      ("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(root)))
  thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
  thread.start()
  yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
  httpd.shutdown()
  httpd.server_close()


def _sha(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _isbi_sources(served: pathlib.Path) -> dict:
  """Fixture TIFFs in ``served`` and a sources table with their true hashes."""
  data_helpers.write_isbi(served, n=2, size=40)
  files = tuple(download.RemoteFile(n, "http://unused.invalid/" + n,
                                    _sha((served / n).read_bytes()))
                for n in ("train-volume.tif", "train-labels.tif", "test-volume.tif"))
  return {"isbi2012": download.Source("isbi2012", files)}


def test_download_verifies_and_readers_can_load(server, tmp_path):
  served, url = server
  sources = _isbi_sources(served)
  folder = download.download("isbi2012", tmp_path / "data", url_base=url, sources=sources)
  assert sorted(p.name for p in folder.iterdir()) == [
      "test-volume.tif", "train-labels.tif", "train-volume.tif"]
  c = default.get_config()
  c.dataset, c.data_dir = "isbi2012", str(tmp_path / "data")
  assert len(datasets.load_split(c, "train")) == 2
  RangeHandler.ranges.clear()
  download.download("isbi2012", tmp_path / "data", url_base=url, sources=sources)
  assert RangeHandler.ranges == []  # verified files are not fetched again


def test_corrupted_file_is_rejected_and_not_kept(server, tmp_path):
  served, url = server
  sources = _isbi_sources(served)
  good = (served / "train-labels.tif").read_bytes()
  (served / "train-labels.tif").write_bytes(good[:-10] + b"0123456789")
  with pytest.raises(UserInputError, match="train-labels.tif .* corrupted.*does not match"):
    download.download("isbi2012", tmp_path / "data", url_base=url, sources=sources)
  left = sorted(p.name for p in (tmp_path / "data" / "isbi2012").iterdir())
  assert left == ["train-volume.tif"]  # no bad file, no .part


def test_resume_partial_download(server, tmp_path):
  served, url = server
  sources = _isbi_sources(served)
  body = (served / "train-volume.tif").read_bytes()
  dest = tmp_path / "data" / "isbi2012"
  dest.mkdir(parents=True)
  (dest / "train-volume.tif.part").write_bytes(body[:1000])
  download.download("isbi2012", tmp_path / "data", url_base=url, sources=sources)
  assert (dest / "train-volume.tif").read_bytes() == body
  assert RangeHandler.ranges[0] == "bytes=1000-"
  assert not list(dest.glob("*.part"))


def test_same_pixels_other_tiff_layout_accepted(server, tmp_path):
  served, url = server
  pixels = np.arange(2 * 16 * 16, dtype=np.uint8).reshape(2, 16, 16)
  tifffile.imwrite(served / "v.tif", pixels, compression="zlib")  # bytes differ, pixels same
  remote = download.RemoteFile("v.tif", "http://unused.invalid/v.tif", "0" * 64,
                               download.pixels_sha256(pixels))
  path = download.download_file(remote, tmp_path, url_base=url)
  np.testing.assert_array_equal(tifffile.imread(path), pixels)


def _ctc_zip(served: pathlib.Path, tmp_path: pathlib.Path) -> bytes:
  data_helpers.write_ctc(tmp_path / "zipsrc", "PhC-C2DH-U373", frames=3)
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    for p in sorted((tmp_path / "zipsrc").rglob("*.tif")):
      z.write(p, p.relative_to(tmp_path / "zipsrc").as_posix())
  (served / "PhC-C2DH-U373.zip").write_bytes(buf.getvalue())
  return buf.getvalue()


def test_ctc_zip_is_checked_and_unpacked(server, tmp_path):
  served, url = server
  _ctc_zip(served, tmp_path)
  folder = download.download("PhC-C2DH-U373", tmp_path / "data", url_base=url)  # the real table
  assert (folder / "PhC-C2DH-U373" / "01_ST" / "SEG" / "man_seg002.tif").is_file()
  assert not (folder / "PhC-C2DH-U373.zip").exists()
  c = default.get_config()
  c.dataset, c.data_dir = "phc_u373", str(tmp_path / "data")
  assert datasets.load_split(c, "train").names == ["01/t000", "01/t001", "01/t002"]


def test_truncated_zip_rejected(server, tmp_path):
  served, url = server
  body = _ctc_zip(served, tmp_path)
  (served / "PhC-C2DH-U373.zip").write_bytes(body[: len(body) // 2])
  with pytest.raises(UserInputError, match="PhC-C2DH-U373.zip .* not a valid zip"):
    download.download("PhC-C2DH-U373", tmp_path / "data", url_base=url)
  assert not list((tmp_path / "data" / "ctc").iterdir())


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_cli_offline_and_corrupted_give_one_line(server, tmp_path, capsys):
  rc = data_tool.main(["download", "--dataset", "isbi2012", "--dest", str(tmp_path),
                       "--url-base", f"http://127.0.0.1:{_closed_port()}"])
  err = capsys.readouterr().err
  assert rc == 2 and err.count("\n") == 1 and "are you offline?" in err
  served, url = server
  data_helpers.write_isbi(served)  # not the real ISBI stacks: hashes cannot match
  rc = data_tool.main(["download", "--dataset", "isbi2012", "--dest", str(tmp_path),
                       "--url-base", url])
  err = capsys.readouterr().err
  assert rc == 2 and err.startswith("error: downloaded train-volume.tif") and "Traceback" not in err
  assert not (tmp_path / "isbi2012" / "train-volume.tif").exists()


def test_isbi_table_matches_reference_copies(data_root):
  for remote in download.SOURCES["isbi2012"].files:
    path = data_root / "isbi2012" / remote.name
    assert download.file_sha256(path) == remote.sha256
    assert download.pixels_sha256(tifffile.imread(path)) == remote.pixels_sha256

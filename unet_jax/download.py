"""Downloads the paper's datasets into the layout :mod:`unet_jax.datasets` reads.

    python -m unet_jax.data_tool download --dataset isbi2012 --dest ~/data/unet
    python train.py --config configs/isbi.py --config.data_dir ~/data/unet ...

:data:`SOURCES` is keyed by the provider's name of a dataset, which is the
``download`` field of its entry in :data:`unet_jax.datasets.SPECS`.

Every file is written to ``NAME.part`` first; an interrupted download resumes
from there (HTTP ``Range``), and only a verified file gets its final name.

| source (dataset)          | where (official, URLs in SOURCES)           | check                           |
| ------------------------- | ------------------------------------------- | ------------------------------- |
| isbi2012 (isbi2012)       | brainiac2.mit.edu/isbi_challenge, 3 TIFFs   | SHA-256 of file or of pixels    |
| DIC-C2DH-HeLa (dic_hela)  | celltrackingchallenge.net DIC-C2DH-HeLa.zip | zip CRCs + members (no SHA-256) |
| PhC-C2DH-U373 (phc_u373)  | celltrackingchallenge.net PhC-C2DH-U373.zip | zip CRCs + members (no SHA-256) |

ISBI: the file SHA-256 values are those of the project's reference copies
(``shared/data/SHA256SUMS``). Those copies were rewritten by tifffile from
lossless PNGs, so the official ImageJ TIFFs differ byte-wise while holding the
same pixels; a file is therefore also accepted when the SHA-256 of its decoded
pixels (dtype, shape and bytes, see :func:`pixels_sha256`) matches. For the CTC
archives we know no published SHA-256: the zip's CRC-32 of every member is
checked (``zipfile.testzip``) and the expected frame/mask folders must be in it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import socket
import sys
import urllib.error
import urllib.request
import zipfile

import numpy as np

from unet_jax.errors import UserInputError

CHUNK = 1 << 16
TIMEOUT_S = 30


@dataclasses.dataclass(frozen=True)
class RemoteFile:
  """One file of a dataset.

  Attributes:
    name: file name at the source and on disk.
    url: official URL.
    sha256: SHA-256 of the file bytes, or None if unknown.
    pixels_sha256: SHA-256 of the decoded TIFF pixels (alternative check).
    members: for a zip: paths that must be in it (it is then extracted).
  """
  name: str
  url: str
  sha256: str | None = None
  pixels_sha256: str | None = None
  members: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Source:
  """A dataset: its files and the sub-folder of ``--dest`` they go to."""
  subdir: str
  files: tuple[RemoteFile, ...]


_ISBI = "http://brainiac2.mit.edu/isbi_challenge/sites/default/files/"
_CTC = "http://data.celltrackingchallenge.net/training-datasets/"

SOURCES = {
    "isbi2012": Source("isbi2012", (
        RemoteFile("train-volume.tif", _ISBI + "train-volume.tif",
                   "93ada718f7ec9158e3460139062a7f6699d7f62c5139b6eaf91b0df08e97670f",
                   "7b9d5702a3bc9af215405dee39533b91622393d52bb2bdefa47f0e0a5c018294"),
        RemoteFile("train-labels.tif", _ISBI + "train-labels.tif",
                   "26e556a9207ac838b7327f2a1868ecab2b9ae18d1458a6ddff806e3b9f83e910",
                   "183932f5803bec1ee82617a889497133ec10768bb4daf8c62bec9225cf507d91"),
        RemoteFile("test-volume.tif", _ISBI + "test-volume.tif",
                   "f1bb7381f51b6ce1e301d23b319b9f019e916142f1f69fe943776968cc8fa02d",
                   "9f5682fc42ade46092e7e35addb7582abe96b3dd00fc5854660680fa5ff3664b"),
    )),
    "DIC-C2DH-HeLa": Source("ctc", (
        RemoteFile("DIC-C2DH-HeLa.zip", _CTC + "DIC-C2DH-HeLa.zip",
                   members=("DIC-C2DH-HeLa/01/t000.tif", "DIC-C2DH-HeLa/01_ST/SEG/man_seg000.tif")),
    )),
    "PhC-C2DH-U373": Source("ctc", (
        RemoteFile("PhC-C2DH-U373.zip", _CTC + "PhC-C2DH-U373.zip",
                   members=("PhC-C2DH-U373/01/t000.tif", "PhC-C2DH-U373/01_ST/SEG/man_seg000.tif")),
    )),
}


# What to cite when publishing results on these data (shown by `download --help`).
CITATIONS = {
    "isbi2012": (
        "ISBI 2012 EM segmentation challenge: I. Arganda-Carreras et al., \"Crowdsourcing "
        "the creation of image segmentation algorithms for connectomics\", Front. Neuroanat. "
        "9:142 (2015); data: A. Cardona et al., \"An integrated micro- and macroarchitectural "
        "analysis of the Drosophila brain by computer-assisted serial section electron "
        "microscopy\", PLoS Biol. 8(10):e1000502 (2010)."),
    "dic-hela": (
        "Cell Tracking Challenge (DIC-C2DH-HeLa, data of G. van Cappellen, Erasmus MC): "
        "V. Ulman et al., \"An objective comparison of cell-tracking algorithms\", Nat. "
        "Methods 14:1141-1152 (2017); M. Maska et al., \"The Cell Tracking Challenge: 10 "
        "years of objective benchmarking\", Nat. Methods 20:1010-1020 (2023)."),
    "phc-u373": (
        "Cell Tracking Challenge (PhC-C2DH-U373, data of S. Kumar, UC Berkeley): V. Ulman "
        "et al., Nat. Methods 14:1141-1152 (2017); M. Maska et al., Nat. Methods "
        "20:1010-1020 (2023)."),
}


def citations_text() -> str:
  """The citations of every downloadable dataset, for ``--help``."""
  return "please cite the data providers:\n" + "\n".join(
      f"  {name}: {text}" for name, text in CITATIONS.items())


def file_sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(CHUNK), b""):
      h.update(chunk)
  return h.hexdigest()


def pixels_sha256(array: np.ndarray) -> str:
  """SHA-256 of an array's dtype, shape and C-order bytes (layout-independent TIFF check)."""
  a = np.ascontiguousarray(array)
  h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
  h.update(a.tobytes())
  return h.hexdigest()


def verify(path: pathlib.Path, remote: RemoteFile) -> str | None:
  """None if ``path`` is a good copy of ``remote``, else what is wrong."""
  if remote.members:
    try:
      with zipfile.ZipFile(path) as z:
        bad = z.testzip()
        names = set(z.namelist())
    except (zipfile.BadZipFile, OSError, EOFError) as e:
      return f"not a valid zip archive ({e})"
    if bad is not None:
      return f"member {bad} fails its CRC check"
    missing = [m for m in remote.members if m not in names]
    return f"archive lacks {missing}" if missing else None
  digest = file_sha256(path)
  if remote.sha256 is None or digest == remote.sha256:
    return None
  if remote.pixels_sha256 is not None:
    try:
      import tifffile  # pylint: disable=g-import-not-at-top
      if pixels_sha256(tifffile.imread(path)) == remote.pixels_sha256:
        return None
    except Exception:  # pylint: disable=broad-except  # unreadable = not the expected file
      pass
  return f"SHA-256 {digest} does not match the expected {remote.sha256}"


def _open(url: str, offset: int):
  """HTTP response for ``url`` from byte ``offset`` (Range request if > 0)."""
  request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
  try:
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)
  except urllib.error.HTTPError as e:
    if e.code == 416 and offset:  # the .part already holds the whole file
      return None
    raise UserInputError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
  except (urllib.error.URLError, socket.timeout, OSError) as e:
    reason = getattr(e, "reason", e)
    raise UserInputError(
        f"cannot download {url} ({reason}): are you offline? Download on a machine with "
        f"internet access and copy the folder, or pass --url-base of a mirror") from None


def fetch(url: str, part: pathlib.Path) -> None:
  """Downloads ``url`` into ``part``, resuming from its current size."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  offset = part.stat().st_size if part.exists() else 0
  response = _open(url, offset)
  if response is None:
    return
  with response:
    resumed = offset > 0 and response.status == 206
    offset = offset if resumed else 0
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length is not None else None
    with open(part, "ab" if resumed else "wb") as f, tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, desc=part.name[:-5],
        disable=not sys.stderr.isatty()) as bar:
      try:
        for chunk in iter(lambda: response.read(CHUNK), b""):
          f.write(chunk)
          bar.update(len(chunk))
      except (OSError, socket.timeout) as e:
        raise UserInputError(f"download of {url} interrupted ({e}); run the same command "
                             f"again to resume from {part}") from None


def download_file(remote: RemoteFile, folder: pathlib.Path, url_base: str | None = None
                  ) -> pathlib.Path:
  """Fetches and verifies one file into ``folder`` (skipped if already there and good).

  Args:
    remote: what to fetch.
    folder: destination folder.
    url_base: mirror; the file is fetched from ``url_base/remote.name``.
  Returns:
    The verified file's path.
  Raises:
    UserInputError: offline, HTTP error, or the file fails verification (the
      bad download is deleted; nothing is left under the final name).
  """
  folder.mkdir(parents=True, exist_ok=True)
  final = folder / remote.name
  if final.exists() and verify(final, remote) is None:
    return final
  url = f"{url_base.rstrip('/')}/{remote.name}" if url_base else remote.url
  part = folder / f"{remote.name}.part"
  fetch(url, part)
  problem = verify(part, remote)
  if problem is not None:
    part.unlink()
    raise UserInputError(f"downloaded {remote.name} from {url} is corrupted or not the "
                         f"expected file: {problem}; deleted it, try again or use another mirror")
  os.replace(part, final)
  return final


def download(source: str, dest: str | pathlib.Path, url_base: str | None = None,
             sources: dict[str, Source] | None = None) -> pathlib.Path:
  """Downloads a dataset into ``dest`` in the layout the readers expect.

  Args:
    source: a key of ``sources`` (isbi2012, DIC-C2DH-HeLa, PhC-C2DH-U373;
      ``datasets.spec(name).download``).
    dest: data folder (use it as ``config.data_dir``).
    url_base: optional mirror (``url_base/FILE``).
    sources: the table (default :data:`SOURCES`; tests pass their own).
  Returns:
    The folder holding the dataset (``dest/isbi2012`` or ``dest/ctc``).
  """
  sources = SOURCES if sources is None else sources
  if source not in sources:
    raise UserInputError(f"unknown download source {source!r}; choose one of "
                         f"{', '.join(sorted(sources))}")
  folder = pathlib.Path(dest).expanduser() / sources[source].subdir
  for remote in sources[source].files:
    if remote.members and all((folder / m).exists() for m in remote.members):
      continue  # already unpacked
    path = download_file(remote, folder, url_base)
    if remote.members:
      with zipfile.ZipFile(path) as z:
        z.extractall(folder)
      path.unlink()  # unpacked; the archive is no longer needed
  return folder


"""`pneumoscope data download NAME`: from a set's name to a folder `data prepare` reads.

Steps: the folder is already there (its marker says so) -> nothing to do, no network;
else the file comes from ``--from``, from the cache (``CACHE/downloads/NAME``, where a file
fetched by hand may be put) or from the publisher (``fetch``), is checked against the
published size and MD5, and is unpacked into place (``install``). The folder is ``--out``
or ``CACHE/datasets/<set>`` (``catalog.cache_root``). The RSNA set needs a Kaggle account:
``kaggle_steps`` says how to fetch it, and ``--from`` (or the cache) takes the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pneumoscope.core import __version__
from pneumoscope.core.errors import UserError
from pneumoscope.data.public.catalog import (
    KAGGLE_RSNA_COMMAND,
    PublicSet,
    RemoteFile,
    cache_root,
    file_url,
    get_set,
    pneumoniamnist_size_of,
)
from pneumoscope.data.public.fetch import Target, fetch, locked, md5_of, mismatch
from pneumoscope.data.public.install import (
    check_free,
    content_problem,
    existing,
    into_place,
    link_or_copy,
    unpack_zip,
)


@dataclass(frozen=True)
class Ready:
    """A folder `data prepare --source` reads as it is."""

    path: Path
    dataset: PublicSet
    variant: str
    fresh: bool  # False when an earlier download had left it there


def downloads_dir() -> Path:
    return cache_root() / "downloads"


def dataset_dir(ps: PublicSet, size: int | str | None = None) -> Path:
    """Where the set goes without ``--out``."""
    return cache_root() / "datasets" / ps.folder_name(size)


def download(
    name: str,
    out: Path | str | None = None,
    from_file: Path | str | None = None,
    size: int | str | None = None,
    base_url: str | None = None,
    progress: bool = True,
) -> Ready:
    """Fetch (or take ``from_file``), check and unpack the set ``name``; see the module."""
    done = already_there(name, out, size)
    if done is not None:
        return done
    ps = get_set(name)
    rf = ps.file(size)
    variant = _variant(ps, rf)
    dest = Path(out).expanduser() if out else dataset_dir(ps, size)
    check_free(dest)
    with locked(cache_root() / "locks" / f"{rf.name}.lock"):
        return _download_locked(ps, rf, variant, dest, from_file, base_url, progress)


def _download_locked(ps, rf, variant, dest, from_file, base_url, progress) -> Ready:
    """``download`` once no other pneumoscope fetches or unpacks the same file."""
    if existing(dest, ps, variant):  # the other one just finished it
        return Ready(dest, ps, variant, fresh=False)
    archive, source = _archive(ps, rf, from_file, base_url, progress)
    marker = {
        "dataset": ps.name,
        "variant": variant,
        "title": ps.title,
        "licence": ps.licence,
        "citation": ps.citation,
        "file": rf.name,
        "md5": md5_of(archive),
        "from": source,
        "pneumoscope_version": __version__,
    }

    def build(tmp: Path) -> None:
        if ps.kind == "npz":
            link_or_copy(archive, tmp / rf.name)
        else:
            unpack_zip(archive, tmp, progress)
        problem = content_problem(ps, tmp)
        if problem:
            raise UserError(f"{archive} is not the {ps.name} set: {problem}; get it from {ps.page}")

    into_place(dest, build, marker)
    return Ready(dest, ps, variant, fresh=True)


def already_there(
    name: str, out: Path | str | None = None, size: int | str | None = None
) -> Ready | None:
    """The folder an earlier download of this set left (at ``out`` or in the cache)."""
    ps = get_set(name)
    rf = ps.file(size)
    dest = Path(out).expanduser() if out else dataset_dir(ps, size)
    variant = _variant(ps, rf)
    return Ready(dest, ps, variant, fresh=False) if existing(dest, ps, variant) else None


def _variant(ps: PublicSet, rf: RemoteFile) -> str:
    return next(k for k, f in ps.files.items() if f is rf)


def cached_file(ps: PublicSet, size: int | str | None = None) -> Path | None:
    """The set's file in the download cache (fetched earlier or put there by hand)."""
    path = downloads_dir() / ps.file(size).name
    return path if path.is_file() else None


def _archive(
    ps: PublicSet, rf: RemoteFile, from_file, base_url: str | None, progress: bool
) -> tuple[Path, str]:
    """(the checked file to install, where it came from)."""
    if from_file is not None:
        path = Path(from_file).expanduser()
        return _given(ps, rf, path, f"get it from {ps.page}"), str(from_file)
    cached = downloads_dir() / rf.name
    if cached.is_file():
        return _given(ps, rf, cached, "delete it and run this command again"), str(cached)
    if ps.kind == "kaggle":
        raise UserError(
            f"{ps.name} needs a Kaggle account: `{KAGGLE_RSNA_COMMAND} -p {downloads_dir()}`, "
            f"then run this command again (`pneumoscope data download {ps.name}` prints the "
            "steps)"
        )
    url = file_url(rf, base_url)
    target = Target(url, cached, rf.size, rf.md5, manual_way(ps, rf, url))
    return fetch(target, progress), url


def _given(ps: PublicSet, rf: RemoteFile, path: Path, remedy: str) -> Path:
    """``path`` when it is the published file (size and MD5, where published); else a
    UserError ending with ``remedy``."""
    if not path.exists():
        raise UserError(f"--from {path}: file not found")
    if path.is_dir():
        raise UserError(
            f"--from {path} is a folder: give the downloaded archive, or give the folder "
            f"itself to `pneumoscope data prepare --source {path}`"
        )
    problem = mismatch(path, rf.size, rf.md5)
    if not problem:
        return path
    other = pneumoniamnist_size_of(md5_of(path)) if ps.kind == "npz" else None
    if other:
        raise UserError(f"{path} is PneumoniaMNIST at {other} px: add --size {other}")
    raise UserError(f"{path} is not {rf.name} as published: {problem}; {remedy}")


def manual_way(ps: PublicSet, rf: RemoteFile, url: str | None = None) -> str:
    """How to do it by hand, said in one line: what to download, from where, where to put it."""
    where = url or rf.url or ps.page
    variant = _variant(ps, rf)
    size = f" --size {variant}" if variant else ""
    return (
        f"download {rf.name} by hand from {where} (page: {ps.page}) and put it at "
        f"{downloads_dir() / rf.name}, then run again; or give it with --from FILE "
        f"(pneumoscope data download {ps.name}{size} --from FILE)"
    )


def kaggle_steps() -> str:
    """How to get the RSNA set with a Kaggle account, and the layout `data prepare` reads."""
    ps = get_set("rsna")
    zip_name = ps.file().name
    downloads = downloads_dir()
    return "\n".join(
        [
            f"{ps.title} needs a (free) Kaggle account; its images are not public downloads.",
            f"  1. sign in at {ps.page}, open its Data tab and accept the competition rules;",
            "  2. pip install kaggle, and put your API token in ~/.kaggle/kaggle.json "
            "(kaggle.com > Settings > API > Create New Token);",
            f"  3. {KAGGLE_RSNA_COMMAND} -p {downloads}",
            f"     (about 4 GB: {downloads / zip_name});",
            "  4. pneumoscope data download rsna [--out DIR]",
            f"     (or, with the zip elsewhere: --from PATH/{zip_name}).",
            "This unpacks the zip into a folder that `pneumoscope data prepare --source DIR` "
            "reads as it is:",
            "  DIR/stage_2_train_labels.csv          patientId,x,y,width,height,Target",
            "  DIR/stage_2_detailed_class_info.csv   patientId,class (optional: without it "
            "every Target 0 is normal)",
            "  DIR/stage_2_train_images/<patientId>.dcm",
            f"Licence: {ps.licence}. Cite: {ps.citation}.",
        ]
    )

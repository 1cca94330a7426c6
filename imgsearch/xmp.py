"""Keyword tags in XMP sidecar files, for digiKam, darktable and Lightroom to read. Standard library only.

A sidecar is an RDF/XML file next to the image; keywords live in the `dc:subject` bag, and imgsearch lists the
ones it put there in its own `imgsearch:keywords` bag, so that a later export takes back only its own:

    <x:xmpmeta xmlns:x="adobe:ns:meta/" xmlns:imgsearch="https://github.com/imgsearch/ns/1.0/">
     <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
      <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">
       <dc:subject><rdf:Bag><rdf:li>beach</rdf:li></rdf:Bag></dc:subject>
       <imgsearch:keywords><rdf:Bag><rdf:li>beach</rdf:li></rdf:Bag></imgsearch:keywords>
      </rdf:Description>
     </rdf:RDF>
    </x:xmpmeta>

Tools do not all read dc:subject: darktable prefers `lr:hierarchicalSubject` when a file has it, and digiKam
reads the first non-empty of `digiKam:TagsList`, `MicrosoftPhoto:LastKeywordXMP`, `lr:hierarchicalSubject`
..., then dc:subject. So the same keywords also go into each of those lists the sidecar already has (a flat
keyword is a valid one-level hierarchical tag); none of them is created.

Existing sidecars are merged, never replaced: darktable keeps its whole edit history in them. The image file
itself is never opened.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import stat
import threading
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from imgsearch.errors import XmpError
from imgsearch.files import Unreadable, read_regular
from imgsearch.types import ExportReport, Skipped

NAMINGS = ("full", "stem")
MAX_SIDECAR = 16 << 20  # a sidecar larger than this is not one (digiKam and darktable write a few KB)

NS_X = "adobe:ns:meta/"
NS_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
NS_DC = "http://purl.org/dc/elements/1.1/"
NS_LR = "http://ns.adobe.com/lightroom/1.0/"
NS_DIGIKAM = "http://www.digikam.org/ns/1.0/"
NS_MSPHOTO = "http://ns.microsoft.com/photo/1.0/"
NS_IMGSEARCH = "https://github.com/imgsearch/ns/1.0/"

X_XMPMETA = f"{{{NS_X}}}xmpmeta"
X_XAPMETA = f"{{{NS_X}}}xapmeta"  # the pre-2004 spelling, still found in old files
RDF_RDF = f"{{{NS_RDF}}}RDF"
RDF_DESCRIPTION = f"{{{NS_RDF}}}Description"
RDF_ABOUT = f"{{{NS_RDF}}}about"
RDF_BAG = f"{{{NS_RDF}}}Bag"
RDF_SEQ = f"{{{NS_RDF}}}Seq"
RDF_LI = f"{{{NS_RDF}}}li"
RDF_CONTAINERS = (RDF_BAG, RDF_SEQ, f"{{{NS_RDF}}}Alt")
DC_SUBJECT = f"{{{NS_DC}}}subject"
LR_HIERARCHICAL_SUBJECT = f"{{{NS_LR}}}hierarchicalSubject"
DIGIKAM_TAGS_LIST = f"{{{NS_DIGIKAM}}}TagsList"
MSPHOTO_LAST_KEYWORD_XMP = f"{{{NS_MSPHOTO}}}LastKeywordXMP"
IMGSEARCH_KEYWORDS = f"{{{NS_IMGSEARCH}}}keywords"

# Other tools' keyword lists, mirrored when present, with the container each is defined as (exiv2's table).
MIRRORS = {LR_HIERARCHICAL_SUBJECT: RDF_BAG, DIGIKAM_TAGS_LIST: RDF_SEQ, MSPHOTO_LAST_KEYWORD_XMP: RDF_BAG}

XPACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
XPACKET_END = '<?xpacket end="w"?>'
XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'

_BASE_PREFIXES = {
    "x": NS_X,
    "rdf": NS_RDF,
    "dc": NS_DC,
    "lr": NS_LR,
    "digiKam": NS_DIGIKAM,
    "MicrosoftPhoto": NS_MSPHOTO,
    "imgsearch": NS_IMGSEARCH,
}
# Characters outside XML 1.0's Char production: ElementTree would write them and leave a file no one can parse.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# ElementTree keeps its prefix map in one module-wide dict; serialise one tree at a time.
_SERIALIZE_LOCK = threading.Lock()


@dataclass
class _Sidecar:
    """A parsed sidecar and what is needed to write it back in the same shape."""

    root: ET.Element
    prefixes: list[tuple[str, str]]  # (prefix, uri) as declared in the file, in document order
    wrapped: bool  # <?xpacket?> around the root (exiv2 and digiKam write it; darktable does not)
    declared: bool  # an <?xml?> declaration first (darktable writes one; exiv2 does not)
    fresh: bool = False  # made here, not read from disk: free to lay out


@dataclass
class _List:
    """One list property of a sidecar: the rdf:Description holding it, the property, and its container."""

    description: ET.Element
    prop: ET.Element
    container: ET.Element
    new: bool = False  # made by this call


def export(paths: Sequence[str], subjects: Mapping[str, Sequence[str]], naming: str = "full") -> ExportReport:
    """Write each image's keywords (subjects[path]; none: an earlier export's keywords may have to go) into its
    sidecar. Images that share one sidecar (`stem` naming: photo.heic and photo.jpg both have photo.xmp) share
    their keywords there: the union, written once. A sidecar that cannot be read or written is reported, not
    fatal; one left as it was is counted."""
    report = ExportReport()
    by_sidecar: dict[Path, list[str]] = {}
    for path in paths:
        by_sidecar.setdefault(sidecar_path(path, naming), []).append(path)
    for sidecar, images in by_sidecar.items():
        keywords = list(dict.fromkeys(k for path in images for k in subjects.get(path, [])))
        before = _stamp(sidecar)
        try:
            write_subjects(images[0], keywords, naming)
        except XmpError as exc:
            report.failed.append(Skipped(str(sidecar), str(exc)))
            continue
        if _stamp(sidecar) != before:
            report.written += 1
        elif any(path in subjects for path in images):
            report.unchanged += 1
    return report


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def sidecar_path(image_path: str | Path, naming: str = "full") -> Path:
    """Where the sidecar of `image_path` lives.

    naming "full": photo.jpg -> photo.jpg.xmp (darktable, digiKam default); "stem": photo.jpg -> photo.xmp
    (Lightroom, digiKam option). "stem" gives a RAW+JPEG pair (photo.cr2, photo.jpg) one shared sidecar, which is
    why darktable and digiKam default to "full".
    """
    image = Path(image_path)
    if naming == "full":
        return image.with_name(image.name + ".xmp")
    if naming == "stem":
        return image.with_suffix(".xmp")
    raise XmpError(f"unknown sidecar naming {naming!r}; use one of: {', '.join(NAMINGS)}")


def read_subjects(sidecar: str | Path) -> list[str]:
    """dc:subject keywords in an existing sidecar, in file order ([] if the file does not exist)."""
    return _read_list(Path(sidecar), DC_SUBJECT)


def owned_subjects(sidecar: str | Path) -> list[str]:
    """The keywords imgsearch recorded as its own in a sidecar (`imgsearch:keywords`), in file order."""
    return _read_list(Path(sidecar), IMGSEARCH_KEYWORDS)


def write_subjects(image_path: str | Path, subjects: Sequence[str], naming: str = "full") -> Path:
    """Make `subjects` the keywords imgsearch gives the image, in its sidecar; returns the sidecar's path.

    The keywords go into dc:subject (created, with the sidecar, if needed) and into each of
    lr:hierarchicalSubject, digiKam:TagsList and MicrosoftPhoto:LastKeywordXMP the sidecar already has. The
    sidecar records which keywords imgsearch put there (`imgsearch:keywords`, see `owned_subjects`); keywords
    recorded by an earlier call and not in `subjects` are taken back out of every list, and the record becomes
    `subjects` less any keyword that was already in one of the lists without being imgsearch's: that keyword
    belongs to whoever put it there and is never recorded or removed. Empty `subjects` therefore takes back
    everything imgsearch wrote, record included; a list left empty by that is removed whole.

    An existing sidecar is merged, not replaced: every other property, namespace prefix and keyword in it is
    kept (darktable keeps its edit history in these files), and so is its <?xpacket?> wrapper or its absence.
    Existing keywords keep their order, new ones follow; a keyword already present (exact match) is not added
    again; empty strings are ignored. Nothing is written when nothing would change: no empty sidecar appears
    next to an untagged photo, and an existing one keeps its mtime (darktable and digiKam look at it to notice
    outside edits).

    Written atomically (temp file in the same folder, fsync, os.replace); the image file is never opened.
    Raises XmpError, with a one-line message naming the file, when an existing sidecar is not well-formed XML
    or not XMP, when a keyword holds characters XML cannot carry, or when the sidecar cannot be written.
    """
    wanted = _clean(subjects, "subjects")
    path = sidecar_path(image_path, naming)
    if not wanted and not path.exists():
        return path
    sidecar = _load(path) if path.exists() else _new()
    if _merge(_rdf(sidecar.root, path), wanted):
        _write_atomic(path, _serialize(sidecar))
    return path


# -- reading -------------------------------------------------------------------------------------------------


def _load(path: Path) -> _Sidecar:
    try:
        data, _ = read_regular(str(path), MAX_SIDECAR)
    except FileNotFoundError as exc:
        raise XmpError(f"cannot read sidecar {path}: it is gone") from exc
    except Unreadable as exc:
        raise XmpError(f"cannot read sidecar {path}: {exc}; check it is a readable file") from exc
    try:
        # ElementTree drops prefixes on parse and renames them ns0, ns1... on write unless told them again.
        prefixes = [ns for _, ns in ET.iterparse(io.BytesIO(data), events=("start-ns",))]
        # Keep comments and processing instructions inside the tree; other tools may have put them there.
        parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True, insert_pis=True))
        root = ET.fromstring(data, parser=parser)
    except ET.ParseError as exc:
        raise XmpError(f"sidecar {path} is not well-formed XML ({exc}); fix or move it aside") from exc
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n")
    return _Sidecar(root, prefixes, wrapped=b"<?xpacket" in data, declared=head.startswith(b"<?xml "))


def _read_list(path: Path, tag: str) -> list[str]:
    if not path.exists():
        return []
    found = _find_list(_rdf(_load(path).root, path), tag, RDF_BAG)
    return _keywords(found.container) if found else []


def _rdf(root: ET.Element, path: Path) -> ET.Element:
    """The rdf:RDF element: under x:xmpmeta as usual, or the root itself, which the XMP spec also allows."""
    if root.tag == RDF_RDF:
        return root
    if root.tag not in (X_XMPMETA, X_XAPMETA):
        raise XmpError(f"sidecar {path} is not XMP (root is <{root.tag}>, not x:xmpmeta); move it aside")
    rdf = root.find(RDF_RDF)
    return ET.SubElement(root, RDF_RDF) if rdf is None else rdf  # an empty packet is still XMP


def _find_list(rdf: ET.Element, tag: str, kind: str) -> _List | None:
    """The first `tag` property in any rdf:Description, its value brought into list form; None if absent."""
    for description in rdf.findall(RDF_DESCRIPTION):
        if tag in description.attrib:
            # The attribute form is only valid for simple values; rewrite it as the list it should be.
            value = description.attrib.pop(tag)
            found = _new_list(description, tag, kind)
            if value:
                ET.SubElement(found.container, RDF_LI).text = value
            return found
        prop = description.find(tag)
        if prop is not None:
            return _List(description, prop, _container(prop, kind))
    return None


def _container(prop: ET.Element, kind: str) -> ET.Element:
    """The rdf:Bag (or a Seq/Alt some tools write by mistake) under a list property, made if missing."""
    for child in prop:
        if child.tag in RDF_CONTAINERS:
            return child
    container = ET.SubElement(prop, kind)
    if prop.text and prop.text.strip():
        # A bare text value is malformed for a list, but it is somebody's keyword: keep it as the first item.
        ET.SubElement(container, RDF_LI).text = prop.text
    prop.text = None
    return container


def _keywords(container: ET.Element) -> list[str]:
    return [li.text for li in container.findall(RDF_LI) if li.text]


# -- editing -------------------------------------------------------------------------------------------------


def _clean(keywords: Sequence[str], name: str) -> list[str]:
    """Keywords in order, without repeats or empty strings; refuses what XML cannot hold."""
    if isinstance(keywords, str):
        raise TypeError(f"{name} must be a sequence of keywords, not a single string")
    for keyword in keywords:
        if _NOT_XML.search(keyword):
            raise XmpError(f"keyword {keyword!r} holds a control character XML cannot carry; remove it")
    return [k for k in dict.fromkeys(keywords) if k]


def _new() -> _Sidecar:
    root = ET.Element(X_XMPMETA)
    rdf = ET.SubElement(root, RDF_RDF)
    ET.SubElement(rdf, RDF_DESCRIPTION, {RDF_ABOUT: ""})
    return _Sidecar(root, [], wrapped=True, declared=False, fresh=True)


def _keyword_lists(rdf: ET.Element, create: bool) -> list[_List]:
    """dc:subject (made in the first rdf:Description when missing and `create`), then the mirrors present."""
    subject = _find_list(rdf, DC_SUBJECT, RDF_BAG)
    if subject is None and create:
        descriptions = rdf.findall(RDF_DESCRIPTION)
        first = descriptions[0] if descriptions else _append(rdf, RDF_DESCRIPTION, {RDF_ABOUT: ""})
        subject = _new_list(first, DC_SUBJECT, RDF_BAG)
    mirrors = [_find_list(rdf, tag, kind) for tag, kind in MIRRORS.items()]
    return [found for found in [subject, *mirrors] if found is not None]


def _merge(rdf: ET.Element, wanted: list[str]) -> bool:
    """Give the keyword lists and the record the keywords `wanted`, as write_subjects says; True if changed."""
    lists = _keyword_lists(rdf, create=bool(wanted))
    record = _find_list(rdf, IMGSEARCH_KEYWORDS, RDF_BAG)
    ours = _keywords(record.container) if record is not None else []
    present = {keyword for found in lists for keyword in _keywords(found.container)}
    mine = [keyword for keyword in wanted if keyword in ours or keyword not in present]
    if record is None and mine:
        record = _new_list(lists[0].description, IMGSEARCH_KEYWORDS, RDF_BAG)  # lists[0] is dc:subject
    edits = [(found, set(ours) - set(wanted), wanted) for found in lists]
    if record is not None:
        edits.append((record, set(ours) - set(mine), mine))
    changed = False
    for found, drop, add in edits:
        before = _keywords(found.container)
        _update(found.container, drop, add)
        after = _keywords(found.container)
        if before and not after:
            _detach(found.description, found.prop)  # emptied by taking back our own keywords: gone whole
        changed = changed or after != before
        if found.new and after:
            _indent(found)
    return changed


def _new_list(description: ET.Element, tag: str, kind: str) -> _List:
    prop = _append(description, tag)
    return _List(description, prop, ET.SubElement(prop, kind), new=True)


def _indent(found: _List) -> None:
    """Lay a new property out like its siblings; ElementTree would write it on one line."""
    inner, outer = found.description.text or "", found.prop.tail or ""
    unit = inner[len(outer) :]
    if not (outer.startswith("\n") and inner.startswith(outer) and unit and not unit.strip()):
        return  # not laid out, or laid out in a way not worth guessing: one line is still valid
    if inner[1:] == unit * ((len(inner) - 1) // len(unit)):
        ET.indent(found.prop, space=unit, level=(len(inner) - 1) // len(unit))


def _update(container: ET.Element, drop: set[str], add: Sequence[str]) -> None:
    """Append what of `add` a list lacks, then take `drop` out of it, leaving everything else where it is."""
    have = set(_keywords(container))
    for keyword in add:
        if keyword not in have:
            _append(container, RDF_LI).text = keyword
    for li in container.findall(RDF_LI):
        if li.text in drop:
            _detach(container, li)


def _detach(parent: ET.Element, child: ET.Element) -> None:
    items = list(parent)
    at = items.index(child)
    if at == len(items) - 1 and at > 0:
        items[at - 1].tail = child.tail  # the last item's tail indents the closing tag
    parent.remove(child)
    if not len(parent):
        parent.text = None  # an emptied element closes on its own line: <rdf:Bag/>


def _append(parent: ET.Element, tag: str, attrib: dict[str, str] | None = None) -> ET.Element:
    """A new last child, indented like its siblings so that a file read by people stays readable."""
    child = ET.SubElement(parent, tag, attrib or {})
    if len(parent) > 1:
        previous = parent[-2]
        child.tail, previous.tail = previous.tail, parent.text
    return child


# -- writing -------------------------------------------------------------------------------------------------


def _serialize(sidecar: _Sidecar) -> str:
    root = sidecar.root
    root.tail = None  # whitespace after the root would otherwise be written twice
    if sidecar.fresh:
        ET.indent(root, space=" ")
    with _SERIALIZE_LOCK:
        for prefix, uri in [*_BASE_PREFIXES.items(), *sidecar.prefixes]:
            # "" is a default namespace (ElementTree would also apply it to attributes); ns<N> is refused by
            # register_namespace. Both fall back to a generated prefix, which is still valid XMP.
            if prefix and not re.fullmatch(r"ns\d+", prefix):
                ET.register_namespace(prefix, uri)
        body = ET.tostring(root, encoding="unicode")
    head = [XML_DECLARATION] if sidecar.declared else []
    if sidecar.wrapped:
        return "\n".join([*head, XPACKET_BEGIN, body, XPACKET_END, ""])
    return "\n".join([*head, body, ""])


def _write_atomic(path: Path, text: str) -> None:
    """Write beside the sidecar and rename over it: never through a symlink, whose target may be anywhere (a
    dangling `photo.jpg.xmp -> ~/.config/autostart/x.desktop`); a linked sidecar becomes a file of its own."""
    target = path
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        # O_EXCL with 0o666 lets the umask decide, like any other file the user creates (mkstemp would make
        # it 0600 and hide it from a digiKam or NAS share running as another user).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise XmpError(f"cannot write sidecar {path}: {exc.strerror}; check the folder exists and is writable") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileNotFoundError):
            mode = target.lstat()
            if stat.S_ISREG(mode.st_mode):
                os.chmod(tmp, mode.st_mode & 0o7777)  # a rewrite keeps the mode the user gave the file
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise XmpError(f"cannot write sidecar {path}: {exc.strerror}; check the disk and permissions") from exc
    _fsync_folder(target.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; not possible on every platform (Windows cannot open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

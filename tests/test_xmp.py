"""XMP sidecars: naming, merging into files other tools wrote, mirroring, ownership, atomic and refusing writes."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from imgsearch.errors import ImgSearchError
from imgsearch.xmp import (
    DC_SUBJECT,
    DIGIKAM_TAGS_LIST,
    IMGSEARCH_KEYWORDS,
    LR_HIERARCHICAL_SUBJECT,
    MSPHOTO_LAST_KEYWORD_XMP,
    XmpError,
    owned_subjects,
    read_subjects,
    sidecar_path,
    write_subjects,
)

KEYWORD_LISTS = (DC_SUBJECT, LR_HIERARCHICAL_SUBJECT, DIGIKAM_TAGS_LIST, MSPHOTO_LAST_KEYWORD_XMP, IMGSEARCH_KEYWORDS)

# What darktable 4.x writes (exiv2 compact format, no <?xpacket?>): simple properties as attributes on
# rdf:Description, the edit history as a Seq of rdf:li carrying attributes.
DARKTABLE_SIDECAR = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:exif="http://ns.adobe.com/exif/1.0/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:darktable="http://darktable.sf.net/"
   exif:DateTimeOriginal="2023:06:01 18:42:07"
   xmp:Rating="3"
   xmpMM:DerivedFrom="photo.jpg"
   darktable:import_timestamp="63822054127000000"
   darktable:change_timestamp="63822054410000000"
   darktable:xmp_version="5"
   darktable:raw_params="0"
   darktable:auto_presets_applied="1"
   darktable:history_end="2"
   darktable:iop_order_version="4">
   <dc:title>
    <rdf:Alt>
     <rdf:li xml:lang="x-default">Evening at the pier</rdf:li>
    </rdf:Alt>
   </dc:title>
   <dc:subject>
    <rdf:Bag>
     <rdf:li>beach</rdf:li>
     <rdf:li>sunset</rdf:li>
     <rdf:li>dog</rdf:li>
    </rdf:Bag>
   </dc:subject>
   <lr:hierarchicalSubject>
    <rdf:Bag>
     <rdf:li>places|beach</rdf:li>
    </rdf:Bag>
   </lr:hierarchicalSubject>
   <darktable:masks_history>
    <rdf:Seq/>
   </darktable:masks_history>
   <darktable:history>
    <rdf:Seq>
     <rdf:li
      darktable:num="0"
      darktable:operation="exposure"
      darktable:enabled="1"
      darktable:modversion="6"
      darktable:params="00000000000080b90000803f0000000000000000"
      darktable:multi_name=""
      darktable:multi_priority="0"
      darktable:blendop_version="13"
      darktable:blendop_params="gz11eJxjYIAACQYYOOHEgAZY0QVwggZ7CB6pfOyCAQCmfwVR"/>
     <rdf:li
      darktable:num="1"
      darktable:operation="colorbalancergb"
      darktable:enabled="1"
      darktable:modversion="5"
      darktable:params="gz08eJxjYGiwZ2BgYIQCEA8AGPMCNg=="
      darktable:multi_name="&lt;warm &amp; soft&gt;"
      darktable:multi_priority="0"
      darktable:blendop_version="13"
      darktable:blendop_params="gz11eJxjYIAACQYYOOHEgAZY0QVwggZ7CB6pfOyCAQCmfwVR"/>
    </rdf:Seq>
   </darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""

# What exiv2 (and so digiKam) writes: the <?xpacket?> wrapper, and here two rdf:Description elements with the
# keywords in the second one.
WRAPPED_TWO_DESCRIPTIONS = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:digiKam="http://www.digikam.org/ns/1.0/">
   <digiKam:TagsList>
    <rdf:Seq>
     <rdf:li>Places/Pier</rdf:li>
    </rdf:Seq>
   </digiKam:TagsList>
  </rdf:Description>
  <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">
   <dc:subject>
    <rdf:Bag>
     <rdf:li>Pier</rdf:li>
    </rdf:Bag>
   </dc:subject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""

# Every keyword list digiKam and darktable read, each holding keywords somebody else put there.
ALL_LISTS = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:digiKam="http://www.digikam.org/ns/1.0/"
    xmlns:MicrosoftPhoto="http://ns.microsoft.com/photo/1.0/">
   <dc:subject>
    <rdf:Bag>
     <rdf:li>Pier</rdf:li>
    </rdf:Bag>
   </dc:subject>
   <lr:hierarchicalSubject>
    <rdf:Bag>
     <rdf:li>Places|Pier</rdf:li>
    </rdf:Bag>
   </lr:hierarchicalSubject>
   <digiKam:TagsList>
    <rdf:Seq>
     <rdf:li>Places/Pier</rdf:li>
    </rdf:Seq>
   </digiKam:TagsList>
   <MicrosoftPhoto:LastKeywordXMP>
    <rdf:Bag>
     <rdf:li>Places/Pier</rdf:li>
    </rdf:Bag>
   </MicrosoftPhoto:LastKeywordXMP>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""

# No dc:subject at all, and no dc namespace declared.
NO_SUBJECT = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="4"/>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg \xff\xd9")
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parse(path: Path) -> ET.Element:
    return ET.fromstring(path.read_bytes())


def signature(
    element: ET.Element, skip: tuple[str, ...] = KEYWORD_LISTS
) -> list[tuple[str, list[tuple[str, str]], str]]:
    """Every element with its attributes and text, in order, leaving out the keyword lists (the record too)."""
    skipped = {id(inner) for tag in skip for prop in element.iter(tag) for inner in prop.iter()}
    return [
        (str(child.tag), sorted(child.attrib.items()), (child.text or "").strip())
        for child in element.iter()
        if id(child) not in skipped
    ]


def keywords(path: Path, tag: str) -> list[str] | None:
    """The items of one list property anywhere in the file, or None when the file does not have it."""
    prop = parse(path).find(f".//{tag}")
    return (
        None if prop is None else [li.text or "" for li in prop.iter("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}li")]
    )


def all_lists(path: Path) -> dict[str, list[str] | None]:
    return {tag.split("}")[1]: keywords(path, tag) for tag in KEYWORD_LISTS}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize(
    ("name", "naming", "expected"),
    [
        ("photo.jpg", "full", "photo.jpg.xmp"),
        ("photo.jpg", "stem", "photo.xmp"),
        ("IMG_0001.CR2", "full", "IMG_0001.CR2.xmp"),
        ("IMG_0001.CR2", "stem", "IMG_0001.xmp"),
        ("my.trip.jpeg", "stem", "my.trip.xmp"),
    ],
)
def test_sidecar_path_naming(tmp_path: Path, name: str, naming: str, expected: str) -> None:
    assert sidecar_path(tmp_path / name, naming) == tmp_path / expected
    assert sidecar_path(str(tmp_path / name), naming) == tmp_path / expected


def test_unknown_naming_is_a_named_error(image: Path) -> None:
    with pytest.raises(XmpError, match="'lightroom'"):
        sidecar_path(image, "lightroom")
    assert issubclass(XmpError, ImgSearchError)


@pytest.mark.parametrize(("naming", "suffix"), [("full", ".jpg.xmp"), ("stem", ".xmp")])
def test_new_sidecar_has_the_subjects_and_packet_wrapper(image: Path, naming: str, suffix: str) -> None:
    path = write_subjects(image, ["beach", "sunset"], naming=naming)

    assert path == image.parent / ("photo" + suffix)
    assert read_subjects(path) == ["beach", "sunset"]
    text = path.read_text(encoding="utf-8")
    assert text.startswith('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>')
    assert text.rstrip().endswith('<?xpacket end="w"?>')
    root = parse(path)
    assert root.tag == "{adobe:ns:meta/}xmpmeta"
    description = root.find("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}RDF/{*}Description")
    assert description is not None
    assert description.get("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}about") == ""
    assert "<dc:subject>" in text and "<rdf:Bag>" in text and "ns0" not in text
    assert leftovers(image.parent) == []


def test_image_file_is_never_touched(image: Path) -> None:
    before, mtime = sha256(image), image.stat().st_mtime_ns

    write_subjects(image, ["one"])
    write_subjects(image, ["two"])
    write_subjects(image, [])

    assert sha256(image) == before
    assert image.stat().st_mtime_ns == mtime


def test_merge_into_darktable_sidecar_keeps_everything_else(image: Path) -> None:
    path = sidecar_path(image)
    path.write_text(DARKTABLE_SIDECAR, encoding="utf-8")
    original = parse(path)

    write_subjects(image, ["cat", "sunset"])

    assert read_subjects(path) == ["beach", "sunset", "dog", "cat"]
    # darktable reads lr:hierarchicalSubject instead of dc:subject when a file has it, so it gets them too.
    assert keywords(path, LR_HIERARCHICAL_SUBJECT) == ["places|beach", "cat", "sunset"]
    assert owned_subjects(path) == ["cat"]  # "sunset" was there before: the user's, not ours
    assert signature(parse(path)) == signature(original)
    text = path.read_text(encoding="utf-8")
    # darktable tells its own sidecars from others' by searching the packet for this literal declaration.
    assert 'xmlns:darktable="http://darktable.sf.net/"' in text
    for prefixed in (
        "<darktable:history>",
        "darktable:operation=",
        "exif:DateTimeOriginal=",
        "<lr:hierarchicalSubject>",
    ):
        assert prefixed in text
    assert "ns0" not in text
    # The file had no packet wrapper and an XML declaration; it keeps that shape.
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    assert "<?xpacket" not in text


def test_subject_in_a_later_description_is_the_one_extended(image: Path) -> None:
    path = sidecar_path(image)
    path.write_text(WRAPPED_TWO_DESCRIPTIONS, encoding="utf-8")
    original = parse(path)

    write_subjects(image, ["sea"])

    root = parse(path)
    assert read_subjects(path) == ["Pier", "sea"]
    assert keywords(path, DIGIKAM_TAGS_LIST) == ["Places/Pier", "sea"]
    assert len(root.findall(f".//{DC_SUBJECT}")) == 1
    # The record sits beside dc:subject, in the second rdf:Description.
    assert root.findall(".//{*}Description")[1].find(IMGSEARCH_KEYWORDS) is not None
    assert signature(root) == signature(original)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<?xpacket begin=") and text.rstrip().endswith('<?xpacket end="w"?>')
    assert "<digiKam:TagsList>" in text


def test_missing_subject_is_added_to_first_description(image: Path) -> None:
    path = sidecar_path(image)
    path.write_text(NO_SUBJECT, encoding="utf-8")

    write_subjects(image, ["pier"])

    assert read_subjects(path) == ["pier"]
    description = parse(path).find(".//{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description")
    assert description is not None
    assert description.get("{http://ns.adobe.com/xap/1.0/}Rating") == "4"
    assert description.find(DC_SUBJECT) is not None
    text = path.read_text(encoding="utf-8")
    assert 'xmlns:dc="http://purl.org/dc/elements/1.1/"' in text and 'xmlns:xmp="http://ns.adobe.com/xap/1.0/"' in text


RDF = 'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"'
DC = 'xmlns:dc="http://purl.org/dc/elements/1.1/"'


@pytest.mark.parametrize(
    "content",
    [
        # dc:subject as an attribute: invalid for a bag, but a keyword all the same.
        f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF {RDF}><rdf:Description rdf:about="" {DC} dc:subject="pier"/>'
        "</rdf:RDF></x:xmpmeta>",
        # dc:subject with bare text instead of a bag.
        f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF {RDF}><rdf:Description rdf:about="" {DC}>'
        "<dc:subject>pier</dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>",
        # rdf:RDF as the root, which the XMP spec allows.
        f'<rdf:RDF {RDF}><rdf:Description rdf:about="" {DC}><dc:subject><rdf:Bag><rdf:li>pier</rdf:li></rdf:Bag>'
        "</dc:subject></rdf:Description></rdf:RDF>",
    ],
    ids=["attribute", "bare-text", "rdf-root"],
)
def test_unusual_shapes_keep_their_keyword(image: Path, content: str) -> None:
    path = sidecar_path(image)
    path.write_text(content, encoding="utf-8")

    assert read_subjects(path) == ["pier"]
    write_subjects(image, ["sea"])

    assert read_subjects(path) == ["pier", "sea"]
    assert len(parse(path).findall(f".//{DC_SUBJECT}")) == 1


def test_keywords_are_mirrored_into_every_list_the_sidecar_has(image: Path) -> None:
    path = sidecar_path(image)
    path.write_text(ALL_LISTS, encoding="utf-8")
    original = parse(path)

    write_subjects(image, ["sea", "boat"])

    assert all_lists(path) == {
        "subject": ["Pier", "sea", "boat"],
        "hierarchicalSubject": ["Places|Pier", "sea", "boat"],
        "TagsList": ["Places/Pier", "sea", "boat"],
        "LastKeywordXMP": ["Places/Pier", "sea", "boat"],
        "keywords": ["sea", "boat"],
    }
    assert signature(parse(path)) == signature(original)
    assert "<rdf:Seq>" in path.read_text(encoding="utf-8")  # digiKam:TagsList keeps its container


@pytest.mark.parametrize(
    "content", [None, NO_SUBJECT, WRAPPED_TWO_DESCRIPTIONS], ids=["fresh", "no-subject", "digikam"]
)
def test_absent_lists_are_not_created(image: Path, content: str | None) -> None:
    path = sidecar_path(image)
    if content is not None:
        path.write_text(content, encoding="utf-8")

    write_subjects(image, ["sea"])

    assert keywords(path, LR_HIERARCHICAL_SUBJECT) is None
    assert keywords(path, MSPHOTO_LAST_KEYWORD_XMP) is None
    assert (keywords(path, DIGIKAM_TAGS_LIST) is None) == (content is not WRAPPED_TWO_DESCRIPTIONS)
    assert "hierarchicalSubject" not in path.read_text(encoding="utf-8")


def test_reexport_takes_back_only_our_old_keyword_from_every_list(image: Path) -> None:
    path = sidecar_path(image)
    path.write_text(ALL_LISTS, encoding="utf-8")
    write_subjects(image, ["sea", "dog"])

    write_subjects(image, ["sea", "boat"])

    assert all_lists(path) == {
        "subject": ["Pier", "sea", "boat"],
        "hierarchicalSubject": ["Places|Pier", "sea", "boat"],
        "TagsList": ["Places/Pier", "sea", "boat"],
        "LastKeywordXMP": ["Places/Pier", "sea", "boat"],
        "keywords": ["sea", "boat"],
    }


def test_a_users_keyword_equal_to_ours_is_never_taken(image: Path) -> None:
    path = sidecar_path(image)
    path.write_text(DARKTABLE_SIDECAR, encoding="utf-8")

    # "beach" and "dog" were in the file before imgsearch wrote anything: they are the user's.
    write_subjects(image, ["beach", "cat", "dog"])
    assert owned_subjects(path) == ["cat"]
    assert read_subjects(path) == ["beach", "sunset", "dog", "cat"]

    write_subjects(image, ["cat"])
    assert read_subjects(path) == ["beach", "sunset", "dog", "cat"]

    write_subjects(image, ["dog"])
    assert read_subjects(path) == ["beach", "sunset", "dog"]
    assert owned_subjects(path) == []
    # The user's keywords were mirrored into lr:hierarchicalSubject too; not ours, so they stay there.
    assert keywords(path, LR_HIERARCHICAL_SUBJECT) == ["places|beach", "beach", "dog"]


def test_a_keyword_we_wrote_and_the_user_removed_comes_back(image: Path) -> None:
    path = write_subjects(image, ["sea", "boat"])
    path.write_text(path.read_text(encoding="utf-8").replace("<rdf:li>sea</rdf:li>", "", 1), encoding="utf-8")
    assert read_subjects(path) == ["boat"]

    write_subjects(image, ["sea", "boat"])

    assert read_subjects(path) == ["boat", "sea"]
    assert owned_subjects(path) == ["sea", "boat"]


def test_empty_subjects_take_back_everything_we_wrote(image: Path) -> None:
    path = sidecar_path(image)
    path.write_text(ALL_LISTS, encoding="utf-8")
    original = parse(path)
    write_subjects(image, ["sea", "boat"])

    write_subjects(image, [])

    assert signature(parse(path), skip=()) == signature(original, skip=())
    assert "imgsearch" not in path.read_text(encoding="utf-8")
    assert owned_subjects(path) == []


def test_empty_subjects_leave_a_sidecar_we_made_without_lists(image: Path) -> None:
    path = write_subjects(image, ["sea"])

    write_subjects(image, [])

    assert all_lists(path) == dict.fromkeys(
        ["subject", "hierarchicalSubject", "TagsList", "LastKeywordXMP", "keywords"]
    )
    content, mtime = path.read_bytes(), path.stat().st_mtime_ns
    write_subjects(image, [])
    assert path.read_bytes() == content and path.stat().st_mtime_ns == mtime


def test_only_a_list_we_emptied_is_removed(image: Path) -> None:
    path = sidecar_path(image)
    path.write_text(ALL_LISTS, encoding="utf-8")
    write_subjects(image, ["sea"])
    # Somebody empties lr:hierarchicalSubject by hand; it is theirs to keep, empty as it is.
    path.write_text(path.read_text(encoding="utf-8").replace("<rdf:li>Places|Pier</rdf:li>", ""), encoding="utf-8")
    path.write_text(path.read_text(encoding="utf-8").replace("<rdf:li>sea</rdf:li>", "", 2), encoding="utf-8")
    assert keywords(path, LR_HIERARCHICAL_SUBJECT) == []

    write_subjects(image, [])

    assert keywords(path, LR_HIERARCHICAL_SUBJECT) == []
    assert keywords(path, DIGIKAM_TAGS_LIST) == ["Places/Pier"]
    assert owned_subjects(path) == []


def test_owned_subjects_of_a_missing_or_foreign_sidecar_is_empty(image: Path) -> None:
    assert owned_subjects(sidecar_path(image)) == []
    sidecar_path(image).write_text(DARKTABLE_SIDECAR, encoding="utf-8")
    assert owned_subjects(sidecar_path(image)) == []


def test_keyword_order_and_no_duplicates(image: Path) -> None:
    path = write_subjects(image, ["b", "a", "b", "", "c"])
    write_subjects(image, ["c", "d", "a", "D", "b"])

    assert read_subjects(path) == ["b", "a", "c", "d", "D"]


def test_rewrite_with_same_keywords_leaves_the_file_alone(image: Path) -> None:
    path = sidecar_path(image)
    path.write_text(DARKTABLE_SIDECAR, encoding="utf-8")
    write_subjects(image, ["cat", "beach"])
    content, mtime = path.read_bytes(), path.stat().st_mtime_ns

    assert write_subjects(image, ["cat", "beach"]) == path
    write_subjects(image, ["beach", "cat", "cat"])

    assert path.read_bytes() == content
    assert path.stat().st_mtime_ns == mtime


def test_nothing_to_write_creates_no_sidecar(image: Path) -> None:
    path = write_subjects(image, [])

    assert path == sidecar_path(image)
    assert not path.exists()


def test_same_keywords_write_the_same_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    write_subjects(a, ["x", "y"])
    write_subjects(b, ["x", "z"])
    write_subjects(b, ["x", "y"])

    assert sidecar_path(a).read_bytes() == sidecar_path(b).read_bytes()


def test_non_ascii_and_xml_special_characters_round_trip(image: Path) -> None:
    keywords = ["café", "日本", "R&D", "a<b", 'say "cheese"', "emoji 📷"]

    path = write_subjects(image, keywords)

    assert read_subjects(path) == keywords
    raw = path.read_bytes()
    assert "café".encode() in raw and "日本".encode() in raw
    assert b"R&amp;D" in raw and b"a&lt;b" in raw


def test_control_characters_are_refused_before_anything_is_written(image: Path) -> None:
    with pytest.raises(XmpError, match="control character"):
        write_subjects(image, ["fine", "bell\x07"])
    assert not sidecar_path(image).exists()


def test_a_single_string_is_not_a_keyword_list(image: Path) -> None:
    with pytest.raises(TypeError):
        write_subjects(image, "beach")


@pytest.mark.parametrize(
    "content",
    [
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF',  # truncated
        "<x:xmpmeta>unbound prefix</x:xmpmeta>",
        "",
        '<?xml version="1.0"?><html><body>not xmp</body></html>',
    ],
)
def test_malformed_sidecar_is_an_error_and_left_unchanged(image: Path, content: str) -> None:
    path = sidecar_path(image)
    path.write_text(content, encoding="utf-8")

    with pytest.raises(XmpError, match=re.escape(str(path))) as caught:
        write_subjects(image, ["beach"])
    with pytest.raises(XmpError):
        read_subjects(path)

    assert "\n" not in str(caught.value)
    assert path.read_text(encoding="utf-8") == content
    assert leftovers(image.parent) == []


def test_read_subjects_of_missing_sidecar_is_empty(tmp_path: Path) -> None:
    assert read_subjects(tmp_path / "nothing.jpg.xmp") == []


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(XmpError, match="cannot write sidecar"):
        write_subjects(tmp_path / "no" / "such" / "photo.jpg", ["beach"])


def test_sidecar_path_taken_by_a_folder_is_an_error(image: Path) -> None:
    sidecar_path(image).mkdir()

    with pytest.raises(XmpError, match=re.escape(str(sidecar_path(image)))):
        write_subjects(image, ["beach"])


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder_is_an_error(image: Path) -> None:
    folder = image.parent
    folder.chmod(0o555)
    try:
        with pytest.raises(XmpError, match="cannot write sidecar"):
            write_subjects(image, ["beach"])
    finally:
        folder.chmod(0o755)
    assert not sidecar_path(image).exists()


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_rewrite_keeps_the_sidecar_mode(image: Path) -> None:
    path = sidecar_path(image)
    path.write_text(NO_SUBJECT, encoding="utf-8")
    path.chmod(0o640)

    write_subjects(image, ["beach"])

    assert stat.S_IMODE(path.stat().st_mode) == 0o640


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_new_sidecar_follows_the_umask(image: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_subjects(image, ["beach"])
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_exiv2_reads_what_we_write(image: Path) -> None:
    """An independent XMP parser (exiv2, the library darktable and digiKam use) agrees with us."""
    pyexiv2 = pytest.importorskip("pyexiv2")
    merged = sidecar_path(image)
    merged.write_text(DARKTABLE_SIDECAR, encoding="utf-8")
    write_subjects(image, ["café", "R&D", "old"])
    write_subjects(image, ["café", "R&D"])
    fresh = write_subjects(image, ["日本", "a<b"], naming="stem")

    merged_xmp = pyexiv2.Image(str(merged)).read_xmp()
    fresh_xmp = pyexiv2.Image(str(fresh)).read_xmp()

    assert merged_xmp["Xmp.dc.subject"] == ["beach", "sunset", "dog", "café", "R&D"]
    assert merged_xmp["Xmp.lr.hierarchicalSubject"] == ["places|beach", "café", "R&D"]
    # exiv2 registers a namespace it does not know from the file's own declaration.
    assert merged_xmp["Xmp.imgsearch.keywords"] == ["café", "R&D"]
    assert merged_xmp["Xmp.darktable.history_end"] == "2"
    assert any(key.startswith("Xmp.darktable.history[2]") for key in merged_xmp)
    assert fresh_xmp["Xmp.dc.subject"] == ["日本", "a<b"]
    assert fresh_xmp["Xmp.imgsearch.keywords"] == ["日本", "a<b"]
    assert "Xmp.lr.hierarchicalSubject" not in fresh_xmp

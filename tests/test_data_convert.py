"""Converters: hand-written fixtures in each source format, with the awkward cases real files contain.

Fixture images are 64 x 48 pixels unless said otherwise, so a box [x1, x2) x [y1, y2) in pixels becomes
``cx = (x1 + x2) / 128, cy = (y1 + y2) / 96, w = (x2 - x1) / 64, h = (y2 - y1) / 48``.
"""

import json
import os
from pathlib import Path

import pytest
import yaml
from PIL import Image

from rtdetr_prune.data import convert_dataset
from rtdetr_prune.errors import UserError


def _image(path: Path, size=(64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 130, 140)).save(path)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _labels(yaml_path: Path, split: str, stem: str) -> list[list[float]]:
    text = (yaml_path.parent / "labels" / split / f"{stem}.txt").read_text()
    return [[float(v) for v in line.split()] for line in text.splitlines()]


def _assert_rows(actual: list[list[float]], expected: list[list[float]]) -> None:
    assert len(actual) == len(expected), actual
    for a, e in zip(actual, expected):
        assert a[0] == e[0] and a[1:] == pytest.approx(e[1:], abs=1e-4), (actual, expected)


def _report(yaml_path: Path) -> dict:
    return json.loads((yaml_path.parent / "conversion.json").read_text())


def _names(yaml_path: Path) -> dict[int, str]:
    return yaml.safe_load(yaml_path.read_text())["names"]


# ---------------------------------------------------------------- VisDrone

VISDRONE_A = "".join(line + "\n" for line in [  # x,y,w,h,score,category,truncation,occlusion
    "10,5,20,10,1,4,0,0",  # car: kept
    "0,0,64,48,0,0,0,0",  # ignored region (category 0, score 0)
    "5,5,10,10,1,0,0,0",  # ignored region (category 0)
    "5,5,10,10,0,1,0,0",  # score 0: ignored too
    "1,2,3,4,1,11,0,0",  # "others"
    "50,40,30,20,1,1,0,1,",  # pedestrian past the right and bottom border, with a trailing comma: clipped
    "70,10,5,5,1,2,0,0",  # fully right of the 64-pixel-wide image
    "63.5,10,10,10,1,4,0,0",  # half a pixel left after clipping: too small
    "3,3,0,5,1,2,0,0",  # zero width
    "garbage",
])


@pytest.fixture
def visdrone(tmp_path) -> Path:
    src = tmp_path / "VisDrone"
    train = src / "VisDrone2019-DET-train"
    for stem in ("a", "b", "c"):
        _image(train / "images" / f"{stem}.jpg")
    _write(train / "annotations" / "a.txt", VISDRONE_A)
    _write(train / "annotations" / "b.txt", "")  # an image with nothing annotated: a negative
    _write(train / "annotations" / "z.txt", "1,1,5,5,1,1,0,0\n")  # its image is missing; c.jpg has no file
    _image(src / "VisDrone2019-DET-val" / "images" / "v.jpg")
    _write(src / "VisDrone2019-DET-val" / "annotations" / "v.txt", "0,0,32,24,1,10,0,0\n")
    return src


def test_visdrone_labels_names_and_drop_counts(visdrone, tmp_path):
    before = _snapshot(visdrone)
    out = convert_dataset("visdrone", visdrone, tmp_path / "out", verbose=False)
    assert _snapshot(visdrone) == before  # the source is never modified
    assert _names(out) == dict(enumerate(
        ["pedestrian", "people", "bicycle", "car", "van", "truck", "tricycle", "awning-tricycle", "bus", "motor"]
    ))
    _assert_rows(_labels(out, "train", "a"), [
        [3, 0.3125, 0.208333, 0.3125, 0.208333],  # car
        [0, 0.890625, 0.916667, 0.21875, 0.166667],  # pedestrian clipped to x 50..64, y 40..48
    ])
    assert _labels(out, "train", "b") == []
    _assert_rows(_labels(out, "val", "v"), [[9, 0.25, 0.25, 0.5, 0.5]])
    assert not (out.parent / "labels" / "train" / "c.txt").exists()
    report = _report(out)
    assert report["dropped_boxes"] == {
        "class_others": 1, "corrupt": 1, "degenerate": 1, "ignored_region": 3, "outside_image": 1, "too_small": 1
    }
    assert report["skipped_images"] == {"annotation_without_image": 1, "no_annotation_file": 1}
    assert report["images"] == report["boxes"] == {"train": 2, "val": 1}
    assert report["clipped_boxes"] == 1
    assert sorted(p.name for p in (out.parent / "images" / "train").iterdir()) == ["a.jpg", "b.jpg"]


def test_visdrone_single_split_folder_gets_a_val_split(visdrone, tmp_path):
    out = convert_dataset("visdrone", visdrone / "VisDrone2019-DET-train", tmp_path / "out", verbose=False)
    report = _report(out)
    assert report["images"]["train"] >= 1 and report["images"]["val"] >= 1
    assert sum(report["images"].values()) == 2
    where = {p.stem: p.parent.name for p in (out.parent / "labels").rglob("*.txt")}
    _assert_rows(_labels(out, where["a"], "a")[:1], [[3, 0.3125, 0.208333, 0.3125, 0.208333]])


def test_ultralytics_loads_a_converted_yaml(visdrone, tmp_path):
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(convert_dataset("visdrone", visdrone, tmp_path / "out", verbose=False)))
    assert data["nc"] == 10 and Path(data["val"]).is_dir()


# ---------------------------------------------------------------- CrowdHuman

def _person(fbox, vbox=None, hbox=None, ignore=0, head_ignore=0, tag="person") -> dict:
    return {
        "tag": tag, "fbox": fbox, "vbox": vbox or fbox, "hbox": hbox or [0, 0, 4, 4],
        "extra": {"ignore": ignore, "box_id": 0, "occ": 0}, "head_attr": {"ignore": head_ignore, "occ": 0, "unsure": 0},
    }


@pytest.fixture
def crowdhuman(tmp_path) -> Path:
    src = tmp_path / "CrowdHuman"
    boxes = [
        _person([10, 5, 20, 30], vbox=[12, 6, 10, 20], hbox=[14, 5, 6, 6]),
        {"tag": "mask", "fbox": [0, 0, 10, 10], "vbox": [0, 0, 10, 10], "hbox": [0, 0, 10, 10], "extra": {"ignore": 1}},
        _person([20, 20, 10, 10], ignore=1),
        _person([-10, 20, 30, 40], vbox=[0, 20, 20, 28], hbox=[-5, 20, 8, 8]),  # past the left and bottom border
        _person([40, 10, 10, 20], hbox=[42, 10, 4, 4], head_ignore=1),
    ]
    train = [
        {"ID": "273271,c9db000d5146c15", "gtboxes": boxes},
        {"ID": "empty", "gtboxes": []},
        {"ID": "gone", "gtboxes": []},  # no image file
    ]
    _write(src / "annotation_train.odgt", "".join(json.dumps(r) + "\n" for r in train))
    _write(src / "annotation_val.odgt", json.dumps({"ID": "v1", "gtboxes": [_person([32, 0, 32, 48])]}) + "\n")
    for stem in ("273271,c9db000d5146c15", "empty", "v1"):
        _image(src / "Images" / f"{stem}.jpg")
    return src


def test_crowdhuman_full_boxes(crowdhuman, tmp_path):
    out = convert_dataset("crowdhuman", crowdhuman, tmp_path / "out", verbose=False)
    assert _names(out) == {0: "person"}
    _assert_rows(_labels(out, "train", "273271,c9db000d5146c15"), [
        [0, 0.3125, 0.416667, 0.3125, 0.625],
        [0, 0.15625, 0.708333, 0.3125, 0.583333],
        [0, 0.703125, 0.416667, 0.15625, 0.416667],
    ])
    assert _labels(out, "train", "empty") == []
    _assert_rows(_labels(out, "val", "v1"), [[0, 0.75, 0.5, 0.5, 1.0]])
    report = _report(out)
    assert report["dropped_boxes"] == {"ignore_flag": 1, "mask": 1}
    assert report["skipped_images"] == {"missing_image": 1}
    assert report["clipped_boxes"] == 1


def test_crowdhuman_visible_boxes_with_heads(crowdhuman, tmp_path):
    out = convert_dataset("crowdhuman", crowdhuman, tmp_path / "out", box="vbox", heads=True, verbose=False)
    assert _names(out) == {0: "person", 1: "head"}
    _assert_rows(_labels(out, "train", "273271,c9db000d5146c15"), [
        [0, 0.265625, 0.333333, 0.15625, 0.416667],
        [1, 0.265625, 0.166667, 0.09375, 0.125],
        [0, 0.15625, 0.708333, 0.3125, 0.583333],
        [1, 0.0234375, 0.5, 0.046875, 0.166667],  # head clipped from x=-5 to x=0
        [0, 0.703125, 0.416667, 0.15625, 0.416667],  # its head is flagged ignore
    ])
    assert _report(out)["dropped_boxes"] == {"ignore_flag": 3, "mask": 2}


def test_crowdhuman_rejects_unknown_box_kind(crowdhuman, tmp_path):
    with pytest.raises(UserError, match="Did you mean 'vbox'"):
        convert_dataset("crowdhuman", crowdhuman, tmp_path / "out", box="vbbox")


# ---------------------------------------------------------------- VOC (SeaShips)

def _voc_xml(objects: str, size: str = "<size><width>64</width><height>48</height><depth>3</depth></size>") -> str:
    return f"<annotation><folder>VOC</folder><filename>x.jpg</filename>{size}{objects}</annotation>"


def _voc_object(name, box, difficult=0) -> str:
    xmin, ymin, xmax, ymax = box
    return (f"<object><name>{name}</name><truncated>0</truncated><difficult>{difficult}</difficult>"
            f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


@pytest.fixture
def voc(tmp_path) -> Path:
    src = tmp_path / "SeaShips"
    ann = {
        # Corners are 1-based and inclusive: (11, 6, 30, 25) is x 10..30, y 5..25. The last ship is past the border.
        "s1": _voc_xml(_voc_object("ship", (11, 6, 30, 25)) + _voc_object("boat", (1, 1, 10, 10), difficult=1)
                       + _voc_object("ship", (51, 41, 80, 60))),
        "s2": _voc_xml(_voc_object("boat", (1, 1, 40, 20)), size=""),  # no <size>: read the 80 x 40 image
        "s3": _voc_xml(""),  # no objects
        "s4": _voc_xml(_voc_object("ship", ("abc", 1, 5, 5)), size="<size><width>0</width><height>0</height></size>"),
    }
    for stem, text in ann.items():
        _write(src / "Annotations" / f"{stem}.xml", text)
        _image(src / "JPEGImages" / f"{stem}.jpg", (80, 40) if stem == "s2" else (64, 48))
    for split, stems in {"train": "s1\ns2\n", "val": "s3\n", "test": "s4\n", "trainval": "s1\ns2\ns3\n"}.items():
        _write(src / "ImageSets" / "Main" / f"{split}.txt", stems)
    return src


S1_SHIPS = [[1, 0.3125, 0.3125, 0.3125, 0.416667], [1, 0.890625, 0.916667, 0.21875, 0.166667]]


def test_voc_splits_difficult_and_missing_size(voc, tmp_path):
    out = convert_dataset("voc", voc, tmp_path / "out", verbose=False)
    data = yaml.safe_load(out.read_text())
    assert data["names"] == {0: "boat", 1: "ship"}
    assert (data["train"], data["val"], data["test"]) == ("images/train", "images/val", "images/test")
    _assert_rows(_labels(out, "train", "s1"), S1_SHIPS)
    _assert_rows(_labels(out, "train", "s2"), [[0, 0.25, 0.25, 0.5, 0.5]])
    assert _labels(out, "val", "s3") == [] and _labels(out, "test", "s4") == []
    assert _report(out)["dropped_boxes"] == {"corrupt": 1, "difficult": 1}


def test_voc_keep_difficult_and_given_names(voc, tmp_path):
    out = convert_dataset("voc", voc, tmp_path / "a", keep_difficult=True, verbose=False)
    _assert_rows(_labels(out, "train", "s1"), [S1_SHIPS[0], [0, 0.078125, 0.104167, 0.15625, 0.208333], S1_SHIPS[1]])
    out = convert_dataset("voc", voc, tmp_path / "b", names=["ship"], verbose=False)
    assert _names(out) == {0: "ship"}
    _assert_rows(_labels(out, "train", "s1"), [[0, *row[1:]] for row in S1_SHIPS])
    assert _report(out)["dropped_boxes"] == {"corrupt": 1, "difficult": 1, "unknown_class": 1}


def test_voc_without_image_sets_splits_by_name(voc, tmp_path):
    for path in (voc / "ImageSets" / "Main").iterdir():
        path.unlink()
    out = convert_dataset("voc", voc, tmp_path / "out", verbose=False)
    where = {p.stem: p.parent.name for p in (out.parent / "labels").rglob("*.txt")}
    assert sorted(where) == ["s1", "s2", "s3", "s4"] and set(where.values()) == {"train", "val"}
    _assert_rows(_labels(out, where["s1"], "s1"), S1_SHIPS)
    again = convert_dataset("voc", voc, tmp_path / "out", overwrite=True, verbose=False)
    assert {p.stem: p.parent.name for p in (again.parent / "labels").rglob("*.txt")} == where


# ---------------------------------------------------------------- COCO

@pytest.fixture
def coco(tmp_path) -> Path:
    src = tmp_path / "coco"
    categories = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]
    train = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
            {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48},  # no annotations: a negative
            {"id": 3, "file_name": "gone.jpg", "width": 64, "height": 48},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 18, "bbox": [10, 5, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 90, "bbox": [50, 40, 30, 20], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 64, 48], "iscrowd": 1},
            {"id": 4, "image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5], "iscrowd": 0},
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [100, 100, 5, 5], "iscrowd": 0},
            {"id": 6, "image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0},
        ],
        "categories": categories,
    }
    val = {
        "images": [{"id": 10, "file_name": "c.jpg"}],  # no width/height: read the 32 x 32 image
        "annotations": [{"id": 7, "image_id": 10, "category_id": 1, "bbox": [8, 8, 16, 16], "iscrowd": 0}],
        "categories": categories,
    }
    _write(src / "annotations" / "instances_train2017.json", json.dumps(train))
    _write(src / "annotations" / "instances_val2017.json", json.dumps(val))
    _image(src / "train2017" / "a.jpg")
    _image(src / "train2017" / "b.jpg")
    _image(src / "images" / "val2017" / "c.jpg", (32, 32))
    return src


def test_coco_contiguous_ids_crowd_and_negatives(coco, tmp_path):
    out = convert_dataset("coco", coco, tmp_path / "out", verbose=False)
    assert _names(out) == {0: "person", 1: "dog", 2: "toothbrush"}
    _assert_rows(_labels(out, "train", "a"), [
        [1, 0.3125, 0.208333, 0.3125, 0.208333],  # dog: COCO id 18
        [2, 0.890625, 0.916667, 0.21875, 0.166667],  # toothbrush: COCO id 90, clipped
    ])
    assert _labels(out, "train", "b") == []
    _assert_rows(_labels(out, "val", "c"), [[0, 0.5, 0.5, 0.5, 0.5]])
    report = _report(out)
    assert report["dropped_boxes"] == {"crowd": 1, "no_image": 1, "outside_image": 1, "unknown_class": 1}
    assert report["skipped_images"] == {"missing_image": 1}


# ---------------------------------------------------------------- errors a user can make

def test_user_errors_say_what_and_where(coco, tmp_path):
    with pytest.raises(UserError, match="Did you mean 'coco'"):
        convert_dataset("cocoo", coco, tmp_path / "out")
    with pytest.raises(UserError, match="does not exist"):
        convert_dataset("coco", tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(UserError, match="No Annotations/ folder"):
        convert_dataset("voc", coco, tmp_path / "out")
    with pytest.raises(UserError, match="annotation_train.odgt"):
        convert_dataset("crowdhuman", coco, tmp_path / "out")
    with pytest.raises(UserError, match="VisDrone2019-DET-train"):
        convert_dataset("visdrone", coco, tmp_path / "out")
    with pytest.raises(UserError, match="Did you mean 'keep_difficult'"):
        convert_dataset("voc", coco, tmp_path / "out", keep_dificult=True)
    with pytest.raises(UserError, match="must be a bool"):
        convert_dataset("crowdhuman", coco, tmp_path / "out", heads="yes")
    with pytest.raises(UserError, match="separate output folder"):
        convert_dataset("coco", coco, coco)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="overwrite=True"):
        convert_dataset("coco", coco, tmp_path / "busy")
    (coco / "annotations" / "instances_train2017.json").unlink()
    with pytest.raises(UserError, match="instances_train"):
        convert_dataset("coco", coco, tmp_path / "out")


# ---------------------------------------------------------------- paths from annotations stay inside the source
# Convention (data/convert/common.py): an entry whose file lies outside the source folder stops the conversion
# with one line naming it, before anything is written; a file that is not an image is skipped and counted.

IMAGE_DIR = {"coco": "train2017", "voc": "JPEGImages", "crowdhuman": "Images",
             "visdrone": "VisDrone2019-DET-train/images"}


def _add_entry(fmt: str, src: Path, name: str) -> None:
    """List one more train image in the annotations of ``src``, named ``name`` the way ``fmt`` names images."""
    if fmt == "coco":  # name: file_name
        path = src / "annotations" / "instances_train2017.json"
        data = json.loads(path.read_text())
        data["images"].append({"id": 50, "file_name": name, "width": 64, "height": 48})
        path.write_text(json.dumps(data))
    elif fmt == "voc":  # name: <filename> of annotation s5, listed in train.txt
        _write(src / "Annotations" / "s5.xml", _voc_xml("").replace("x.jpg", name))
        _write(src / "ImageSets" / "Main" / "train.txt", "s1\ns2\ns5\n")
    elif fmt == "crowdhuman":  # name: ID, the image being Images/<ID>.jpg
        with (src / "annotation_train.odgt").open("a") as f:
            f.write(json.dumps({"ID": name, "gtboxes": []}) + "\n")
    else:  # visdrone names images by listing images/; an annotation file makes one count
        _write(src / "VisDrone2019-DET-train" / "annotations" / f"{Path(name).stem}.txt", "1,1,5,5,1,1,0,0\n")


def _traversal(fmt, src, evil):
    return {"coco": "../evil.jpg", "voc": "../../evil.jpg", "crowdhuman": "../../evil"}[fmt]


def _absolute(fmt, src, evil):
    return str(evil.with_suffix("")) if fmt == "crowdhuman" else str(evil)


def _symlink(fmt, src, evil):
    (src / IMAGE_DIR[fmt] / "link.jpg").symlink_to(evil)
    return "link" if fmt == "crowdhuman" else "link.jpg"


OUTSIDE = [(fmt, case) for fmt in ("coco", "voc", "crowdhuman") for case in (_traversal, _absolute, _symlink)]
OUTSIDE.append(("visdrone", _symlink))  # VisDrone names come from the folder listing: only a symlink can lead out


def _refused(fmt: str, src: Path, out: Path, named: str) -> None:
    with pytest.raises(UserError) as e:
        convert_dataset(fmt, src, out, verbose=False)
    message = str(e.value)
    assert "outside the source folder" in message and named in message, message
    assert len(message.splitlines()) == 1, message
    assert not out.exists(), "nothing written"


@pytest.mark.parametrize("fmt, case", OUTSIDE, ids=[f"{f}-{c.__name__[1:]}" for f, c in OUTSIDE])
def test_an_entry_leading_outside_the_source_is_refused(fmt, case, request, tmp_path):
    src = request.getfixturevalue(fmt)
    evil = tmp_path / "evil.jpg"  # a real image next to the source, not in it
    _image(evil)
    name = case(fmt, src, evil)
    _add_entry(fmt, src, name)
    _refused(fmt, src, tmp_path / "out", name)


def test_voc_image_set_id_cannot_lead_out(voc, tmp_path):
    _write(tmp_path / "evil.xml", _voc_xml(""))  # what ImageSets id ../../evil reaches from Annotations/
    _write(voc / "ImageSets" / "Main" / "train.txt", "s1\n../../evil\n")
    _refused("voc", voc, tmp_path / "out", "'../../evil'")


def test_visdrone_annotation_symlink_cannot_lead_out(visdrone, tmp_path):
    _write(tmp_path / "labels.txt", "1,1,5,5,1,1,0,0\n")
    ann = visdrone / "VisDrone2019-DET-train" / "annotations" / "b.txt"
    ann.unlink()
    ann.symlink_to(tmp_path / "labels.txt")
    _refused("visdrone", visdrone, tmp_path / "out", "annotations/b.txt")


def _truncated(path: Path) -> None:
    """An image cut in half, as an interrupted copy leaves it: its header opens, its data does not verify.

    PNG data, whatever the suffix: Pillow identifies images by content, and verifies PNG checksums (a JPEG's
    verify reads only its header).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (120, 130, 140)).save(path, format="PNG")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("fmt", ["coco", "voc", "crowdhuman", "visdrone"])
def test_a_file_that_is_not_an_image_is_skipped_and_counted(fmt, request, tmp_path):
    src = request.getfixturevalue(fmt)
    _truncated(src / IMAGE_DIR[fmt] / "broken.jpg")
    _add_entry(fmt, src, "broken" if fmt == "crowdhuman" else "broken.jpg")
    out = convert_dataset(fmt, src, tmp_path / "out", verbose=False)
    assert _report(out)["skipped_images"].get("unreadable_image") == 1
    assert not [p for p in (out.parent / "images").rglob("broken*")]
    assert not [p for p in (out.parent / "labels").rglob("broken*")]


def test_coco_file_without_an_image_suffix_is_not_an_image(coco, tmp_path):
    _write(coco / "train2017" / "hostname", "buildhost\n")
    _add_entry("coco", coco, "hostname")  # with its size listed, as a crafted file would have
    out = convert_dataset("coco", coco, tmp_path / "out", verbose=False)
    assert _report(out)["skipped_images"] == {"missing_image": 1, "not_an_image": 1}
    assert sorted(p.name for p in (out.parent / "images" / "train").iterdir()) == ["a.jpg", "b.jpg"]


def test_images_are_hard_linked_only_when_the_source_file_has_no_other_name(coco, tmp_path):
    os.link(coco / "train2017" / "a.jpg", tmp_path / "elsewhere.jpg")  # a.jpg also has a name outside the source
    out = convert_dataset("coco", coco, tmp_path / "out", verbose=False)
    a, b = (out.parent / "images" / "train" / n for n in ("a.jpg", "b.jpg"))
    assert not a.samefile(coco / "train2017" / "a.jpg") and a.stat().st_nlink == 1, "copied"
    assert a.read_bytes() == (coco / "train2017" / "a.jpg").read_bytes()
    assert b.samefile(coco / "train2017" / "b.jpg"), "linked: b.jpg had no other name"

"""Streaming pretraining sources (`rad_dino_hf.pretraining_data`): source specs, folder / parquet / WebDataset /
local-Hub sources, weighted mixing, rank split, exact resume, decoding and the multi-crop map + collate.

All data is tiny and synthetic (written under tmp_path), so the whole file runs offline in well under a minute.
"""

import copy
import io
import itertools
import math
import tarfile
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from image_processing_rad_dino import to_uint8
from rad_dino_hf.augment import MultiCropAugmentation
from rad_dino_hf.pretraining_data import (
    STREAM_FEATURES,
    DataSource,
    MultiCropMapper,
    _as_image_value,
    build_stream,
    collate_crops,
    decode_or_none,
    open_source,
    parse_source,
)

DICOM_SIZE = 64


# ----------------------------------------------------------------------------- synthetic files


def grey_array(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def dicom_ramp() -> np.ndarray:
    """uint16 pixels rising from left (0) to right (4000)."""
    return np.tile(np.linspace(0, 4000, DICOM_SIZE).astype(np.uint16), (DICOM_SIZE, 1))


def dicom_bytes() -> bytes:
    """A valid Part-10 MONOCHROME1 DICOM file (preamble, file meta) holding `dicom_ramp()`."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows = ds.Columns = DICOM_SIZE
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = dicom_ramp().tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def expected_monochrome1() -> np.ndarray:
    """The ramp as RAD-DINO reads it: MONOCHROME1 inverted (left bright), then min-max scaled to uint8."""
    ramp = dicom_ramp().astype(np.float64)
    return to_uint8(ramp.max() + ramp.min() - ramp)


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def make_folder(path: Path, n: int, prefix: str = "img", seed: int = 0) -> list[str]:
    path.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        file = path / f"{prefix}{i:02d}.png"
        file.write_bytes(encode(grey_array(seed + i)))
        files.append(str(file))
    return sorted(files)


def write_image_parquet(path: Path, images: list[bytes], column: str = "image", feature=None) -> None:
    """Parquet with an image column of encoded bytes (HF `Image` feature by default) and a label column."""
    feature = feature if feature is not None else datasets.Image()
    is_image = isinstance(feature, datasets.Image)
    cells = [{"bytes": b, "path": f"row{i}.png"} for i, b in enumerate(images)] if is_image else images
    features = datasets.Features({column: feature, "label": datasets.Value("int64")})
    table = datasets.Dataset.from_dict({column: cells, "label": list(range(len(images)))}, features=features)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(str(path))


def keys(stream, n: int | None = None) -> list[str]:
    return [example["key"] for example in itertools.islice(stream, n)]


@pytest.fixture
def no_shutdown_sleep(monkeypatch):
    """HF's interleaving sleeps 5 s whenever an iterator over Arrow-based (parquet) sources closes (a guard for
    apache/arrow#45214 at interpreter exit); once per iterator in training, but every `islice` here."""
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """5 PNG + 1 JPEG + 1 MONOCHROME1 DICOM in nested folders, and the files' paths."""
    root = tmp_path_factory.mktemp("mixed")
    files = make_folder(root / "png", 5)
    (root / "jpg").mkdir()
    (root / "jpg" / "photo.jpg").write_bytes(encode(grey_array(99), "JPEG"))
    (root / "scan.dcm").write_bytes(dicom_bytes())
    (root / "notes.txt").write_text("not an image")
    return root, sorted(files + [str(root / "jpg" / "photo.jpg"), str(root / "scan.dcm")])


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    return make_folder(root / "a", 6, "a"), make_folder(root / "b", 4, "b", seed=50)


@pytest.fixture(scope="module")
def parquet_file(tmp_path_factory):
    """4 PNG rows and 1 corrupt row."""
    path = tmp_path_factory.mktemp("pq") / "table.parquet"
    write_image_parquet(path, [encode(grey_array(i)) for i in range(4)] + [b"not an image"])
    return path


# ----------------------------------------------------------------------------- 1. source specs


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("hub:org/name@0.5", DataSource("org/name", "hub", 0.5)),
        ("path/to/dir@2", DataSource("path/to/dir", "auto", 2.0)),
        ("parquet:/x/y", DataSource("/x/y", "parquet", 1.0)),
        ("webdataset:/shards/*.tar@3", DataSource("/shards/*.tar", "webdataset", 3.0)),
        ("some/dir", DataSource("some/dir", "auto", 1.0)),
        ("org/name", DataSource("org/name", "auto", 1.0)),
        ("notakind:x", DataSource("notakind:x", "auto", 1.0)),  # unknown prefixes stay part of the location
    ],
)
def test_parse_source(spec, expected):
    assert parse_source(spec) == expected


@pytest.mark.parametrize("spec", ["dir@abc", "dir@0", "dir@-1", "hub:org/name@nan", "dir@inf", "dir@"])
def test_parse_source_rejects_bad_weights(spec):
    with pytest.raises(ValueError, match="weight"):
        parse_source(spec)


def test_resolved_kind_guesses(tmp_path):
    make_folder(tmp_path / "pngs", 2)
    (tmp_path / "tables" / "nested").mkdir(parents=True)
    (tmp_path / "tables" / "nested" / "part-0.parquet").write_bytes(b"")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "shard-000.tar").write_bytes(b"")
    (tmp_path / "one.parquet").write_bytes(b"")
    assert DataSource(str(tmp_path / "pngs")).resolved_kind() == "folder"
    assert DataSource(str(tmp_path / "tables")).resolved_kind() == "parquet"
    assert DataSource(str(tmp_path / "shards")).resolved_kind() == "webdataset"
    assert DataSource(str(tmp_path / "shards" / "*.tar")).resolved_kind() == "webdataset"
    assert DataSource(str(tmp_path / "one.parquet")).resolved_kind() == "parquet"
    assert DataSource("someone/cxr-dataset").resolved_kind() == "hub"
    assert DataSource(str(tmp_path / "pngs"), kind="hub").resolved_kind() == "hub"  # an explicit kind wins
    with pytest.raises(ValueError, match="Cannot tell"):  # an existing file that is no table or shard
        DataSource(str(tmp_path / "pngs" / "img00.png")).resolved_kind()
    with pytest.raises(ValueError, match="Unknown source kind"):
        DataSource("x", kind="zip").resolved_kind()


# ----------------------------------------------------------------------------- 2. folder source


def test_folder_source_epochs_are_reshuffled_permutations(mixed_folder):
    root, files = mixed_folder
    source = DataSource(str(root))
    stream = open_source(source, seed=0, files_per_shard=3, epochs=3)
    assert stream.features == STREAM_FEATURES
    examples = list(stream)
    assert len(examples) == 3 * len(files)  # notes.txt is not an image
    assert all(e["image"] == {"bytes": None, "path": e["key"]} for e in examples)
    epochs = [[e["key"] for e in examples[i * len(files) : (i + 1) * len(files)]] for i in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == files  # every file exactly once per epoch
    assert len({tuple(epoch) for epoch in epochs}) == 3  # a new order every epoch
    assert keys(open_source(source, seed=0, files_per_shard=3, epochs=3)) == sum(epochs, [])
    assert keys(open_source(source, seed=1, files_per_shard=3, epochs=3)) != sum(epochs, [])


def test_folder_dicom_decodes_to_inverted_uint8(mixed_folder):
    root, _ = mixed_folder
    [example] = [e for e in open_source(DataSource(str(root))) if e["key"].endswith(".dcm")]
    image = decode_or_none(example["image"], example["key"])
    assert image.dtype == np.uint8 and image.shape == (DICOM_SIZE, DICOM_SIZE)
    assert np.array_equal(image, expected_monochrome1())
    assert (image[:, 0] == 255).all() and (image[:, -1] == 0).all()  # MONOCHROME1: high stored values are dark


def test_folder_16bit_png_is_min_max_scaled(tmp_path):
    values = np.linspace(1000, 3000, 40 * 40).reshape(40, 40).astype(np.uint16)
    PIL.Image.fromarray(values).save(tmp_path / "deep.png")
    assert PIL.Image.open(tmp_path / "deep.png").mode.startswith("I")  # really stored as 16-bit
    [example] = list(open_source(DataSource(str(tmp_path))))
    image = decode_or_none(example["image"], example["key"])
    assert image.dtype == np.uint8 and image.min() == 0 and image.max() == 255
    assert np.array_equal(image, to_uint8(values))


def test_decode_keeps_8bit_scales_and_rejects_bad_input(tmp_path):
    grey = np.tile(np.arange(50, 200, dtype=np.uint8), (20, 1))
    rgb = encode(np.repeat(grey[..., None], 3, axis=-1))
    # 8-bit grey and 8-bit RGB of the same grey picture decode alike, neither stretched to 0..255.
    assert np.array_equal(decode_or_none({"bytes": rgb, "path": None}, "rgb"), grey)
    assert np.array_equal(decode_or_none(encode(grey), "grey"), grey)
    (tmp_path / "empty.png").write_bytes(b"")
    assert decode_or_none({"bytes": None, "path": str(tmp_path / "empty.png")}, "empty") is None
    assert decode_or_none({"bytes": b"garbage", "path": None}, "garbage") is None
    assert decode_or_none(None, "missing") is None
    assert decode_or_none(encode(grey_array(0, size=8)), "tiny") is None  # smaller than one ViT patch


def test_decoded_arrays_in_tables_are_re_encoded_losslessly():
    values = np.arange(30 * 40, dtype=np.int64).reshape(30, 40) * 50  # 0..59950: needs 16 bits
    cell = _as_image_value(values.tolist())  # how an array column arrives from a streaming table
    assert set(cell) == {"bytes", "path"} and cell["path"] is None
    assert np.array_equal(decode_or_none(cell, "array"), to_uint8(values))
    assert _as_image_value(b"abc") == {"bytes": b"abc", "path": None}
    assert _as_image_value("x.png") == {"bytes": None, "path": "x.png"}
    assert _as_image_value(None) is None


# ----------------------------------------------------------------------------- 3. parquet source


def test_parquet_source_yields_every_row(parquet_file):
    examples = list(open_source(DataSource(str(parquet_file))))
    assert [e["key"] for e in examples] == [f"row{i}.png" for i in range(5)]
    decoded = [decode_or_none(e["image"], e["key"]) for e in examples]
    for i in range(4):
        assert np.array_equal(decoded[i], grey_array(i))
    assert decoded[4] is None  # the corrupt row is skipped, not fatal
    # The folder form of the same source reads the same rows.
    assert keys(open_source(DataSource(str(parquet_file.parent)))) == [e["key"] for e in examples]


def test_parquet_custom_image_column(tmp_path):
    path = tmp_path / "t.parquet"
    images = [encode(grey_array(i)) for i in range(3)]
    write_image_parquet(path, images, column="xray", feature=datasets.Value("binary"))
    with pytest.raises(ValueError, match="no image column"):
        open_source(DataSource(str(path)))
    examples = list(open_source(DataSource(str(path), image_column="xray")))
    assert [e["key"] for e in examples] == [f"{path}#{i}" for i in range(3)]  # no file name: location#row
    for i, e in enumerate(examples):
        assert np.array_equal(decode_or_none(e["image"], e["key"]), grey_array(i))
    with pytest.raises(ValueError, match="no column 'scan'"):
        open_source(DataSource(str(path), image_column="scan"))


# ----------------------------------------------------------------------------- 4. WebDataset shards


def test_webdataset_mixed_extensions_and_dicom(tmp_path):
    # Stock HF inference refuses shard-0 (its samples mix .png and .jpg) and would drop the .dcm of shard-1 (its
    # field is not among the first shard's): `open_source` gives the builder an explicit schema instead.
    write_tar(
        tmp_path / "shard-0.tar",
        [
            ("a0.png", encode(grey_array(0))),
            ("a0.json", b'{"label": 1}'),
            ("a1.jpg", encode(grey_array(1), "JPEG")),
            ("a2.image.png", encode(grey_array(2))),
        ],
    )
    write_tar(tmp_path / "shard-1.tar", [("b0.png", encode(grey_array(3))), ("b1.dcm", dicom_bytes())])
    source = DataSource(str(tmp_path))
    assert source.resolved_kind() == "webdataset"
    examples = {e["key"]: e for e in open_source(source)}
    shard0, shard1 = tmp_path / "shard-0.tar", tmp_path / "shard-1.tar"
    assert set(examples) == {
        f"{shard0}/a0.png",
        f"{shard0}/a1.jpg",
        f"{shard0}/a2.image.png",
        f"{shard1}/b0.png",
        f"{shard1}/b1.dcm",
    }
    decoded = {key: decode_or_none(e["image"], key) for key, e in examples.items()}
    assert np.array_equal(decoded[f"{shard0}/a0.png"], grey_array(0))
    assert np.array_equal(decoded[f"{shard0}/a2.image.png"], grey_array(2))
    assert decoded[f"{shard0}/a1.jpg"].shape == (32, 32)
    assert np.array_equal(decoded[f"{shard1}/b1.dcm"], expected_monochrome1())
    # A glob of shards is a source too.
    assert sorted(keys(open_source(DataSource(str(tmp_path / "*.tar"))))) == sorted(examples)


# ----------------------------------------------------------------------------- 5. local dataset repo, Hub path


def test_local_dataset_repo_through_the_hub_code_path(tmp_path):
    write_image_parquet(tmp_path / "data" / "train-00000-of-00001.parquet", [encode(grey_array(i)) for i in range(3)])
    write_image_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", [encode(grey_array(9))])
    train = list(open_source(DataSource(str(tmp_path), kind="hub")))
    assert [e["key"] for e in train] == ["row0.png", "row1.png", "row2.png"]
    for i, e in enumerate(train):
        assert np.array_equal(decode_or_none(e["image"], e["key"]), grey_array(i))
    test = list(open_source(DataSource(str(tmp_path), kind="hub", split="test")))
    assert np.array_equal(decode_or_none(test[0]["image"], "t"), grey_array(9))


# ----------------------------------------------------------------------------- 6. weighted mixing


def test_weighted_mix_fraction_and_determinism(two_folders):
    a, b = two_folders
    sources = [DataSource(str(Path(a[0]).parent), weight=3), DataSource(str(Path(b[0]).parent), weight=1)]
    draws = keys(build_stream(sources, seed=0), 400)
    assert set(draws) == set(a) | set(b)  # both repeat past their end
    p, n = 0.75, len(draws)
    fraction = sum(key in a for key in draws) / n
    assert abs(fraction - p) < 4 * math.sqrt(p * (1 - p) / n)  # 4 sigma: 0.75 +- 0.087
    assert keys(build_stream(sources, seed=0), 400) == draws
    assert keys(build_stream(sources, seed=1), 400) != draws


def test_sources_of_different_kinds_mix(two_folders, parquet_file, tmp_path, no_shutdown_sleep):
    write_tar(tmp_path / "shard.tar", [("w0.png", encode(grey_array(7))), ("w1.dcm", dicom_bytes())])
    folder = str(Path(two_folders[0][0]).parent)
    sources = [DataSource(folder), DataSource(str(parquet_file)), DataSource(str(tmp_path / "shard.tar"))]
    draws = list(itertools.islice(build_stream(sources, seed=0), 60))
    assert {e["key"].split("/")[-1] for e in draws} >= {"a00.png", "row0.png", "w1.dcm"}
    decoded = [decode_or_none(e["image"], e["key"]) for e in draws if not e["key"].endswith("row4.png")]
    assert all(image is not None and image.dtype == np.uint8 for image in decoded)


# ----------------------------------------------------------------------------- 7. rank split


def test_rank_split_deals_out_each_epoch(tmp_path):
    files = make_folder(tmp_path, 8)
    source = [DataSource(str(tmp_path))]
    # 8 files in shards of 2: 4 units per epoch, a multiple of world_size, so HF splits by shards.
    ranks = [
        keys(build_stream(source, seed=0, rank=r, world_size=2, files_per_shard=2, folder_epochs=2), 8) for r in (0, 1)
    ]
    for epoch in range(2):
        shares = [set(rank[epoch * 4 : (epoch + 1) * 4]) for rank in ranks]
        assert len(shares[0]) == len(shares[1]) == 4
        assert shares[0].isdisjoint(shares[1]) and sorted(shares[0] | shares[1]) == files


def test_rank_split_rounds_folder_shards_up_to_world_size(tmp_path):
    # 7 files and files_per_shard=64 would be 1 unit per epoch; the folder is cut into 2 shards (3 + 4 files).
    files = make_folder(tmp_path, 7)
    source = [DataSource(str(tmp_path))]
    rank0, rank1 = (keys(build_stream(source, seed=0, rank=r, world_size=2, folder_epochs=2), 4) for r in (0, 1))
    first = 3 if sorted(rank0[:3] + rank1[:4]) == files else 4
    assert sorted(rank0[:first] + rank1[: 7 - first]) == files


def test_rank_split_by_examples_when_shards_do_not_divide(tmp_path, no_shutdown_sleep):
    # Two single-file tables: 1 shard, not a multiple of 2, so every rank keeps every 2nd example of the mix.
    for name in ("p", "q"):
        write_image_parquet(tmp_path / f"{name}.parquet", [encode(grey_array(i)) for i in range(3)])
    sources = [DataSource(str(tmp_path / "p.parquet")), DataSource(str(tmp_path / "q.parquet"))]
    whole = [(e["key"], e["image"]["bytes"]) for e in itertools.islice(build_stream(sources, seed=3), 20)]
    for rank in (0, 1):
        share = build_stream(sources, seed=3, rank=rank, world_size=2)
        assert [(e["key"], e["image"]["bytes"]) for e in itertools.islice(share, 10)] == whole[rank::2]


# ----------------------------------------------------------------------------- 8. exact resume


def test_stream_resumes_at_the_exact_sample(two_folders):
    a, b = two_folders
    sources = [DataSource(str(Path(a[0]).parent), weight=2), DataSource(str(Path(b[0]).parent))]

    def stream():
        return build_stream(sources, seed=5, rank=1, world_size=2, files_per_shard=2, folder_epochs=3)

    original = stream()
    iterator = iter(original)
    seen = [next(iterator)["key"] for _ in range(13)]
    state = copy.deepcopy(original.state_dict())
    expected = [next(iterator)["key"] for _ in range(20)]
    resumed = stream()
    resumed.load_state_dict(state)
    assert keys(resumed, 20) == expected
    assert keys(stream(), 33) == seen + expected


# ----------------------------------------------------------------------------- 9. multi-crop map and collate


@pytest.fixture(scope="module")
def augmentation():
    return MultiCropAugmentation(
        global_crops_size=56,
        local_crops_size=28,
        local_crops_number=2,
        global_crops_scale=(0.32, 1.0),
        local_crops_scale=(0.05, 0.32),
    )


def test_multicrop_mapper_and_collate(tmp_path, augmentation):
    make_folder(tmp_path, 3)
    (tmp_path / "zero.png").write_bytes(b"")
    stream = open_source(DataSource(str(tmp_path)), seed=0)
    samples = list(stream.map(MultiCropMapper(augmentation, seed=0), with_indices=True, remove_columns=["image"]))
    assert [s["ok"] for s in samples].count(False) == 1
    [bad] = [s for s in samples if not s["ok"]]
    assert bad["key"].endswith("zero.png") and bad["global_crops"] is None
    batch = collate_crops(samples)
    assert batch["n_skipped"] == 1 and len(batch["keys"]) == 3
    assert not any(key.endswith("zero.png") for key in batch["keys"])
    assert batch["global_crops"].shape == (2, 3, 3, 56, 56) and batch["global_crops"].dtype == torch.float32
    assert batch["local_crops"].shape == (2, 3, 3, 28, 28)
    assert torch.isfinite(batch["global_crops"]).all() and torch.isfinite(batch["local_crops"]).all()
    assert collate_crops([bad]) == {
        "n_skipped": 1,
        "keys": [],
        "read": [(0, bad["key"], False)],
        "global_crops": None,
        "local_crops": None,
    }


def test_multicrop_mapper_is_seeded_by_seed_rank_and_index(tmp_path, augmentation):
    make_folder(tmp_path, 1)
    example = next(iter(open_source(DataSource(str(tmp_path)))))

    def crops(seed=0, rank=0, index=0):
        out = MultiCropMapper(augmentation, seed=seed, rank=rank)(example, index)
        return torch.cat([out["global_crops"].flatten(), out["local_crops"].flatten()])

    reference = crops()
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(crops(), reference)
    assert not torch.equal(crops(index=1), reference)
    assert not torch.equal(crops(rank=1), reference)
    assert not torch.equal(crops(seed=1), reference)


def test_mapped_stream_resumes_with_the_same_crops(two_folders, augmentation):
    folder = str(Path(two_folders[0][0]).parent)

    def mapped():
        stream = build_stream([DataSource(folder)], seed=0, files_per_shard=2)
        return stream.map(MultiCropMapper(augmentation, seed=0), with_indices=True, remove_columns=["image"])

    original = mapped()
    iterator = iter(original)
    for _ in range(4):
        next(iterator)
    state = copy.deepcopy(original.state_dict())
    expected = [next(iterator) for _ in range(3)]
    resumed = mapped()
    resumed.load_state_dict(state)
    for want, got in zip(expected, itertools.islice(resumed, 3), strict=True):
        assert got["key"] == want["key"]
        assert torch.equal(torch.as_tensor(got["global_crops"]), torch.as_tensor(want["global_crops"]))


# ----------------------------------------------------------------------------- real radiographs


def test_real_folders_decode():
    repo = Path(__file__).resolve().parents[1]
    dicom = DataSource(str(repo / "tests" / "fixtures" / "dicom"))
    examples = {Path(e["key"]).name: e for e in open_source(dicom)}
    assert set(examples) == {"RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG3_UNCR.dcm"}
    uncompressed, j2k = (decode_or_none(examples[n]["image"], n) for n in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"))
    assert uncompressed.dtype == np.uint8 and uncompressed.min() == 0 and uncompressed.max() == 255
    assert np.array_equal(uncompressed, j2k)  # the same image, stored losslessly in JPEG 2000
    jpegs = DataSource(str(repo / "data" / "sample" / "images"))
    draws = list(itertools.islice(build_stream([jpegs], seed=0), 6))
    assert len({e["key"] for e in draws}) == 6
    for e in draws:
        image = decode_or_none(e["image"], e["key"])
        assert image is not None and image.ndim == 2 and image.dtype == np.uint8

"""Embeddings datasets (rad_dino_hf/embeddings.py): the features job's rows equal RadDinoModel's outputs, survive a
kill and a resume, split across processes, skip unreadable files; probes read them; `similar` searches them."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import rad_dino_hf.cli.downstream as train_downstream
from image_processing_rad_dino import RadDinoImageProcessor
from modeling_rad_dino import RadDinoModel
from rad_dino_hf.embeddings import (
    EmbeddingSettings,
    files_source,
    list_images,
    open_input,
    read_embeddings,
    vectors,
    write_embeddings,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = REPO_ROOT / "data" / "sample" / "images"


@pytest.fixture
def images(tmp_path) -> Path:
    """Seven sample radiographs in two sub-folders and one corrupt PNG."""
    folder = tmp_path / "images"
    for position, path in enumerate(list_images(SAMPLE)[:7]):
        target = folder / ("a" if position < 4 else "b") / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    (folder / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    return folder


def load(tiny_model_dir):
    return RadDinoModel.from_pretrained(tiny_model_dir).eval(), RadDinoImageProcessor.from_pretrained(tiny_model_dir)


def table_without_times(folder: Path):
    """The dataset's rows, all columns, ordered as stored."""
    return read_embeddings(folder).drop_columns(["file_mtime_ns"])


def test_rows_equal_the_models_outputs_and_unreadable_files_are_listed(tiny_model_dir, images, tmp_path):
    model, processor = load(tiny_model_dir)
    output = tmp_path / "embeddings"
    settings = EmbeddingSettings(batch_size=2, shard_size=3, patches="fp32", progress=False)
    summary = write_embeddings(model, processor, files_source(list_images(images), images), output, settings)
    assert summary["rows"] == 7 and summary["errors"] == 1 and summary["complete"] and summary["shards"] == 3
    errors = [json.loads(line) for line in (output / "errors.jsonl").read_text().splitlines()]
    assert [error["id"] for error in errors] == ["b/broken.png"] and "broken.png" in errors[0]["error"]

    readable = [path for path in list_images(images) if path.name != "broken.png"]
    with torch.no_grad():
        reference = model(processor([str(path) for path in readable], return_tensors="pt")["pixel_values"])
    table = read_embeddings(output)
    assert table.column("path").to_pylist() == [str(path.resolve()) for path in readable]
    assert table.column("id").to_pylist()[:2] == [f"a/{readable[0].name}", f"a/{readable[1].name}"]
    broken = [path.name for path in list_images(images)].index("broken.png")
    assert table.column("index").to_pylist() == [index for index in range(8) if index != broken]
    torch.testing.assert_close(torch.tensor(vectors(table, "cls")), reference.cls_embeddings)
    patch = reference.patch_embeddings
    torch.testing.assert_close(torch.tensor(vectors(table, "mean_patch")), patch.mean(dim=(2, 3)))
    torch.testing.assert_close(torch.tensor(vectors(table, "patch")), patch.flatten(1))
    metadata = json.loads((output / "embeddings.json").read_text())
    assert metadata["patch_shape"] == [64, 4, 4] and metadata["dtype"] == "fp32"
    assert metadata["model_config"]["hidden_size"] == 64 and metadata["processor"]["crop_size"]["height"] == 56

    from datasets import load_dataset

    loaded = load_dataset("parquet", data_files=str(output / "shard-*.parquet"), split="train")
    assert loaded.num_rows == 7 and np.allclose(loaded[6]["cls"], reference.cls_embeddings[6].numpy())


def test_killed_then_resumed_run_equals_a_straight_run(tiny_model_dir, images, tmp_path, caplog):
    model, processor = load(tiny_model_dir)
    source = files_source(list_images(images), images)
    straight = EmbeddingSettings(
        batch_size=2, shard_size=2, num_workers=2, patches="fp16", patch_grid=2, progress=False
    )
    write_embeddings(model, processor, source, tmp_path / "straight", straight)

    killed = EmbeddingSettings(batch_size=2, shard_size=2, patches="fp16", patch_grid=2, max_shards=2, progress=False)
    first = write_embeddings(model, processor, source, tmp_path / "resumed", killed)
    assert first["shards"] == 2 and not first["complete"] and first["stopped_early"]
    (tmp_path / "resumed" / "shard-00002.parquet.tmp").write_bytes(b"half a shard")  # what a kill leaves behind
    killed.max_shards = None
    caplog.set_level("INFO")
    second = write_embeddings(model, processor, source, tmp_path / "resumed", killed)
    assert second["skipped_shards"] == 2 and second["written_shards"] == 2 and second["complete"]
    assert "Skipping 2 complete shards" in caplog.text
    assert table_without_times(tmp_path / "resumed").equals(table_without_times(tmp_path / "straight"))
    patch = vectors(read_embeddings(tmp_path / "resumed"), "patch")
    assert patch.dtype == np.float16 and patch.shape == (7, 64 * 2 * 2)


def test_other_settings_do_not_resume_into_a_dataset(tiny_model_dir, images, tmp_path):
    model, processor = load(tiny_model_dir)
    source = files_source(list_images(images), images)
    write_embeddings(model, processor, source, tmp_path / "out", EmbeddingSettings(shard_size=4, progress=False))
    with pytest.raises(ValueError, match="other settings"):
        write_embeddings(model, processor, source, tmp_path / "out", EmbeddingSettings(shard_size=3, progress=False))


def test_two_processes_write_the_one_process_dataset(tiny_model_dir, images, tmp_path, free_port):
    arguments = ["features", "--images", str(images), "--model", str(tiny_model_dir), "--shard-size", "2"]
    arguments += ["--num-workers", "0", "--batch-size", "2", "--max-pictures", "0"]
    train_downstream.main([*arguments, "--output", str(tmp_path / "one")])
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    launch += [str(REPO_ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", str(free_port)]
    command = [*launch, str(REPO_ROOT / "train_downstream.py"), *arguments, "--output", str(tmp_path / "two")]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A hang is a failure: subprocess.run raises TimeoutExpired.
    run = subprocess.run(command, timeout=300, env=environment, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Encoding: 100%|██████████| 4/4" in run.stderr and "8/8" not in run.stderr  # shards 0, 2 and 1, 3
    one, two = read_embeddings(tmp_path / "one"), read_embeddings(tmp_path / "two")
    for column in ("index", "id", "path"):
        assert one.column(column).to_pylist() == two.column(column).to_pylist()
    for column in ("cls", "mean_patch"):
        np.testing.assert_allclose(vectors(one, column), vectors(two, column), atol=1e-5, rtol=1e-5)
    [error] = (tmp_path / "two" / "errors.jsonl").read_text().splitlines()
    assert json.loads(error)["id"] == "b/broken.png"


def test_tables_and_streamed_embedded_images(tiny_model_dir, images, tmp_path):
    """A CSV's other columns come along; a streamed parquet of embedded PNG bytes gives the files' embeddings."""
    import pyarrow as pa

    model, processor = load(tiny_model_dir)
    files = [path for path in list_images(images) if path.name != "broken.png"][:3]
    csv = tmp_path / "table.csv"
    csv.write_text(
        "file,patient,age\n" + "".join(f"{p.relative_to(images)},p{i},0{40 + i}\n" for i, p in enumerate(files))
    )
    settings = EmbeddingSettings(batch_size=2, shard_size=2, progress=False)
    source = open_input(str(csv), image_root=str(images))
    write_embeddings(model, processor, source, tmp_path / "csv", settings)
    from_csv = read_embeddings(tmp_path / "csv")
    assert from_csv.column("patient").to_pylist() == ["p0", "p1", "p2"]
    assert from_csv.column("age").to_pylist() == ["040", "041", "042"]  # CSV cells stay text

    parquet = tmp_path / "embedded.parquet"
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cells = [{"bytes": path.read_bytes(), "path": None} for path in files] + [{"bytes": b"junk", "path": None}]
    table = pa.table({"image": pa.array(cells, type=image_type), "label": [0, 1, 0, 1]})
    hub_features = {"info": {"features": {"image": {"_type": "Image"}, "label": {"dtype": "int64", "_type": "Value"}}}}
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps(hub_features)}), parquet)
    source = open_input(str(parquet), image_column="image", streaming=True)
    summary = write_embeddings(model, processor, source, tmp_path / "stream", settings)
    assert summary["rows"] == 3 and summary["errors"] == 1 and summary["complete"] is None  # a stream's length
    streamed = read_embeddings(tmp_path / "stream")
    assert streamed.column("id").to_pylist() == ["0", "1", "2"] and streamed.column("path").to_pylist() == [None] * 3
    assert streamed.column("label").to_pylist() == [0, 1, 0]
    np.testing.assert_array_equal(vectors(streamed, "cls"), vectors(from_csv, "cls"))


def test_push_to_hub_uploads_shards_and_a_card(tiny_model_dir, images, tmp_path, monkeypatch):
    import huggingface_hub

    calls = {}

    class Url:
        repo_id = "someone/cxr-embeddings"

    def create_repo(self, repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)
        return Url()

    def upload_folder(self, repo_id, folder_path, **kwargs):
        calls["upload"] = (repo_id, sorted(p.name for p in Path(folder_path).iterdir()), kwargs)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    output = tmp_path / "out"
    train_downstream.main(
        ["features", "--images", str(images), "--model", str(tiny_model_dir), "--output", str(output)]
        + ["--num-workers", "0", "--max-pictures", "2", "--push-to-hub", "someone/cxr-embeddings"]
    )
    assert calls["create"][1]["repo_type"] == "dataset"
    repo, names, kwargs = calls["upload"]
    assert repo == "someone/cxr-embeddings" and kwargs["repo_type"] == "dataset"
    assert {"README.md", "embeddings.json", "errors.jsonl", "shard-00000.parquet"} <= set(names)
    card = (output / "README.md").read_text()
    assert "7 images" in card and "1 unreadable" in card and str(tiny_model_dir) in card


def test_similar_finds_the_image_then_its_resized_copy_and_lists_the_pair(tiny_model_dir, images, tmp_path):
    from PIL import Image

    query = sorted((images / "a").iterdir())[0]
    with Image.open(query) as image:
        image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.BICUBIC).save(images / "b" / "resized.png")
    index = tmp_path / "index"
    common = ["--model", str(tiny_model_dir), "--num-workers", "0", "--max-pictures", "0", "--shard-size", "3"]
    train_downstream.main(["features", "--images", str(images), "--output", str(index), *common])
    output = tmp_path / "similar"
    outside = tmp_path / "outside.png"  # a query that is not in the dataset is encoded: same neighbours
    shutil.copy(query, outside)
    results = train_downstream.main(
        ["similar", str(query), str(outside), "--index", str(index), "-k", "3", "--output", str(output)]
    )
    for neighbours in results["neighbours"]:
        (first, score_first), (second, score_second), (_, score_third) = neighbours
        assert first == f"a/{query.name}" and second == "b/resized.png"
        assert score_first == pytest.approx(1.0, abs=1e-5) and score_first > score_second > score_third
    lines = (output / "neighbours.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * 3 and (output / "contact_sheet.png").stat().st_size > 1000

    table = read_embeddings(index)
    matrix = np.concatenate([vectors(table, "cls"), vectors(table, "mean_patch")], axis=1)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    cosine = matrix @ matrix.T
    ids = table.column("id").to_pylist()
    a, b = ids.index(f"a/{query.name}"), ids.index("b/resized.png")
    threshold = float(cosine[a, b]) - 1e-4
    expected = {
        tuple(sorted((ids[i], ids[j])))
        for i in range(len(ids))
        for j in range(i + 1, len(ids))
        if cosine[i, j] >= threshold
    }
    duplicates = train_downstream.main(
        ["similar", "--duplicates", "--threshold", str(threshold), "--index", str(index), "--output", str(output)]
    )["duplicates"]
    assert {tuple(sorted(pair[1:])) for pair in duplicates} == expected and (ids[a], ids[b]) in {
        p[1:] for p in duplicates
    }


def test_probes_on_the_dataset_give_the_in_memory_metrics(tiny_model_dir, labelled_sample_csv, tmp_path, monkeypatch):
    """linear-probe and knn read the cache's embeddings dataset: their metrics equal those of the same probes on
    features computed in memory by `extract_features`; a second run, or a probe given the features command's
    dataset of the images (--embeddings), never calls the encoder."""
    from rad_dino_hf.encoders import extract_features
    from rad_dino_hf.weighted_knn import knn_classify
    from rad_dino_hf.metrics import classification_metrics
    from rad_dino_hf.probe import linear_probe
    from rad_dino_hf.tables import patient_split, read_labelled_table

    arguments = ["--model", str(tiny_model_dir), "--csv", str(labelled_sample_csv), "--val-fraction", "0.34"]
    arguments += ["--cache-dir", str(tmp_path / "cache")]
    probe = train_downstream.main(["linear-probe", *arguments, "--output", str(tmp_path / "probe")])
    assert list((tmp_path / "cache").glob("*/part-*/shard-00000.parquet"))

    data = read_labelled_table(str(labelled_sample_csv), "file", ["label"], "patient")
    train, val = patient_split(data.patients, 0.34, 0)
    model, processor = load(tiny_model_dir)
    features = extract_features(model, processor, data.files, progress=False)
    vectors_ = torch.cat([features["cls"], features["patch"].mean(dim=(2, 3))], dim=1).numpy()
    expected = linear_probe(
        vectors_[train], data.labels[train], data.patients[train], vectors_[val], data.labels[val], data.classes, 0
    )
    for metric in ("accuracy", "auroc"):
        assert probe[metric] == expected[metric]

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder ran although the dataset holds every image")

    monkeypatch.setattr(RadDinoModel, "forward", no_encoder)
    knn = train_downstream.main(["knn", *arguments, "--k", "3", "--output", str(tmp_path / "knn")])
    assert knn["features_from_cache"]
    cls = features["cls"].numpy()
    probabilities = knn_classify(cls[train], data.labels[train], cls[val], len(data.classes), 3).numpy()
    reference = classification_metrics(data.labels[val], probabilities, data.classes, seed=0)
    assert knn["accuracy"] == reference["accuracy"] and knn["auroc"] == reference["auroc"]

    monkeypatch.undo()
    embeddings = tmp_path / "embeddings"
    train_downstream.main(
        ["features", "--images", str(SAMPLE), "--model", str(tiny_model_dir), "--output", str(embeddings)]
        + ["--num-workers", "0", "--max-pictures", "0", "--shard-size", "5"]
    )
    monkeypatch.setattr(RadDinoModel, "forward", no_encoder)
    arguments[-1] = str(tmp_path / "empty-cache")
    again = train_downstream.main(
        ["linear-probe", *arguments, "--embeddings", str(embeddings), "--output", str(tmp_path / "again")]
    )
    assert again["features_from_cache"] and again["accuracy"] == probe["accuracy"]
    assert again["auroc"] == probe["auroc"]


def test_retrieval_baseline_returns_the_nearest_training_images_report(tiny_model_dir, images, tmp_path):
    from PIL import Image

    from rad_dino_hf.report.data import ReportPair
    from rad_dino_hf.report.pipeline import nearest_image_reports

    files = [path for path in list_images(images) if path.name != "broken.png"][:4]
    train = [ReportPair(f"t{i}", str(path), f"report {i}", f"p{i}") for i, path in enumerate(files)]
    with Image.open(files[2]) as image:
        resized = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.BICUBIC)
    queries = [ReportPair("q0", resized, "?", "q"), ReportPair("q1", str(files[0]), "?", "q")]
    assert nearest_image_reports(str(tiny_model_dir), train, queries, 3, "cpu") == ["report 2", "report 0"]


def test_bf16_rows_are_close_and_pooled_patch_maps_are_block_means(tiny_model_dir, images, tmp_path):
    model, processor = load(tiny_model_dir)
    source = files_source(list_images(images), images)
    settings = EmbeddingSettings(batch_size=4, shard_size=8, dtype="bf16", patches="fp16", patch_grid=2, progress=False)
    write_embeddings(model, processor, source, tmp_path / "bf16", settings)
    table = read_embeddings(tmp_path / "bf16")
    paths = table.column("path").to_pylist()
    with torch.no_grad():
        reference = model(processor(paths, return_tensors="pt")["pixel_values"])
    cosine = torch.nn.functional.cosine_similarity(torch.tensor(vectors(table, "cls")), reference.cls_embeddings)
    assert cosine.min() > 0.99 and not torch.equal(torch.tensor(vectors(table, "cls")), reference.cls_embeddings)
    # 4 x 4 patch grid -> 2 x 2: each stored value is the mean of a 2 x 2 block (fp32 forward, fp16 storage).
    settings.dtype = "fp32"
    write_embeddings(model, processor, source, tmp_path / "pooled", settings)
    blocks = reference.patch_embeddings.reshape(len(paths), 64, 2, 2, 2, 2).mean(dim=(3, 5))
    stored = torch.tensor(vectors(read_embeddings(tmp_path / "pooled"), "patch").astype(np.float32))
    torch.testing.assert_close(stored.reshape(len(paths), 64, 2, 2), blocks, atol=2e-3, rtol=2e-3)

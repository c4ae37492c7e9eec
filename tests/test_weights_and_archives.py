"""Weights sources (hub cache, offline error, file, seeded random) and the archive builder's contract."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from anysize import weights
from anysize.weights import WeightsUnavailable, hub_cache_path, imagenet_weights, random_weights, read_state_dict
from anysize_tools import archive as build_archive


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """A torch hub cache with nothing in it, and no network: every download fails as it does offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_imagenet_weights_come_from_the_hub_cache_without_download(empty_hub, vgg11_weights_file):
    cached = hub_cache_path("vgg11")
    assert cached.parent == empty_hub and cached.name == "vgg11-8a719046.pth"
    cached.parent.mkdir(parents=True)
    cached.symlink_to(vgg11_weights_file)
    found = imagenet_weights("vgg11")
    assert found.path == cached and found.trained
    assert found.description.startswith("imagenet (IMAGENET1K_V1")
    assert len(found.categories) == 1000 and found.categories[0] == "tench"


def test_offline_imagenet_error_names_the_file_to_place(empty_hub):
    with pytest.raises(WeightsUnavailable) as raised:
        imagenet_weights("vgg16_bn")
    message = str(raised.value)
    assert "vgg16_bn-6c64b313.pth" in message and str(empty_hub) in message and "download failed" in message


def test_random_weights_are_seeded(tmp_path):
    (tmp_path / "a").mkdir()
    # Seeding on the small demo architecture; torchvision's own initialisation once, on vgg11 (500 MB).
    first = read_state_dict(random_weights("demo", 7, tmp_path / "a").path)
    second = read_state_dict(random_weights("demo", 7, tmp_path).path)
    assert all(torch.equal(first[k], second[k]) for k in ("features.0.weight", "classifier.6.weight"))
    other = read_state_dict(random_weights("demo", 8, tmp_path).path)
    assert not torch.equal(other["features.0.weight"], first["features.0.weight"])
    described = random_weights("vgg11", 8, tmp_path)
    assert not described.trained and "untrained" in described.description and "seed 8" in described.description
    assert read_state_dict(described.path)["classifier.6.weight"].shape == (1000, 4096)


def test_files_that_are_not_vgg_state_dicts_are_refused(tmp_path):
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    for name in ("garbage.pth", "other.pth"):
        with pytest.raises(WeightsUnavailable):
            read_state_dict(tmp_path / name)
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        weights.resolve_weights("vgg11", str(tmp_path / "missing.pth"))


def archive_contents(archive: Path) -> dict:
    with zipfile.ZipFile(archive) as mar:
        return {"names": set(mar.namelist()), "config": yaml.safe_load(mar.read("model-config.yaml")),
                "labels": json.loads(mar.read("index_to_name.json")),
                "manifest": json.loads(mar.read("MAR-INF/MANIFEST.json"))}


def test_builder_packages_a_state_dict_file_with_config_labels_and_code(vgg11_weights_file, tmp_path):
    assert build_archive.main(["--arch", "vgg11", "--head", "fcn", "--weights", str(vgg11_weights_file),
                               "--export-path", str(tmp_path), "--batch-size", "8", "--precision", "bf16",
                               "--channels-last", "--topk", "3", "--cpu-threads", "2", "--compile",
                               "--compile-max-sizes", "2", "--buckets", "224x224,448x256", "--warmup-sizes",
                               "224x224,64x64", "--no-gpu-decode"]) == 0
    archive = tmp_path / "vgg11-fcn.mar"  # default name ARCH-HEAD
    contents = archive_contents(archive)
    worker_code = {f"anysize/{module.name}" for module in build_archive.WORKER_PACKAGE.glob("*.py")}
    assert {"anysize/__init__.py", "anysize/handler.py", "anysize/classifier.py"} <= worker_code
    assert {"vgg_handler.py", *worker_code, "vgg11-test.pth", "model-config.yaml", "index_to_name.json"} <= \
        contents["names"]  # the package keeps its folder inside the archive
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in contents["names"])
    config = contents["config"]
    assert {k: config[k] for k in ("batchSize", "maxBatchDelay", "minWorkers", "maxWorkers")} == {
        "batchSize": 8, "maxBatchDelay": 20, "minWorkers": 1, "maxWorkers": 1}
    assert config["responseTimeout"] > 0
    handler = config["handler"]
    assert handler["arch"] == "vgg11" and handler["head"] == "fcn" and handler["weights_file"] == "vgg11-test.pth"
    assert (handler["topk"], handler["precision"], handler["channels_last"], handler["max_pixels"],
            handler["cpu_threads"]) == (3, "bf16", True, 4_194_304, 2)
    assert (handler["compile"], handler["compile_max_sizes"], handler["buckets"], handler["warmup_sizes"],
            handler["gpu_decode"]) == (True, 2, "224x224,448x256", "224x224,64x64", False)
    assert contents["labels"]["0"] == "tench" and len(contents["labels"]) == 1000
    assert contents["manifest"]["model"]["handler"] == "vgg_handler.py"
    with zipfile.ZipFile(archive) as mar:  # stored, not deflated: weights do not compress
        assert mar.getinfo("vgg11-test.pth").compress_type == zipfile.ZIP_STORED


def test_builder_uses_cached_imagenet_weights_in_torchvisions_legacy_format(empty_hub, vgg11_state_dict, tmp_path):
    """torchvision's VGG checkpoints predate torch's zip format and cannot be memory-mapped."""
    empty_hub.mkdir(parents=True)
    torch.save(vgg11_state_dict, hub_cache_path("vgg11"), _use_new_zipfile_serialization=False)
    assert build_archive.main(["--arch", "vgg11", "--head", "adaptive", "--weights", "imagenet", "--name",
                               "my-model", "--export-path", str(tmp_path)]) == 0
    handler = archive_contents(tmp_path / "my-model.mar")["config"]["handler"]
    assert handler["weights"].startswith("imagenet") and handler["trained"] is True
    assert handler["weights_file"] == "vgg11-8a719046.pth"
    assert handler["working_scale"] == "256-512" and "not measured here" in handler["working_scale_source"]


def test_the_builder_takes_serving_defaults_from_beside_the_weights_and_flags_override_them(vgg11_weights_file,
                                                                                             tmp_path, capsys):
    mine = tmp_path / "mine.pth"
    mine.symlink_to(vgg11_weights_file)
    sidecar = tmp_path / "mine.serving.json"
    sidecar.write_text(json.dumps({"working_scale": "64-160", "working_scale_source": "measured by us",
                                   "aggregation": {"fcn": "max"}, "scales": {"adaptive": "", "fcn": "96,192"},
                                   "flip": {"fcn": "true"}, "view_aggregation": {"fcn": "max"}}))

    def handler_section(*flags, head="fcn"):
        assert build_archive.main(["--arch", "vgg11", "--head", head, "--weights", str(mine), "--name", "m",
                                   "--export-path", str(tmp_path), *flags]) == 0, capsys.readouterr().err
        return archive_contents(tmp_path / "m.mar")["config"]["handler"]

    fcn = handler_section()
    assert (fcn["working_scale"], fcn["working_scale_source"], fcn["aggregation"]) == ("64-160", "measured by us", "max")
    assert (fcn["scales"], fcn["flip"], fcn["view_aggregation"]) == ("96,192", True, "max")
    adaptive = handler_section(head="adaptive")
    assert (adaptive["scales"], adaptive["flip"], adaptive["view_aggregation"]) == ("", False, "mean")
    assert adaptive["aggregation"] == "mean"
    overridden = handler_section("--scales", "none", "--no-flip", "--view-aggregation", "mean", "--aggregation",
                                 "lse", "--working-scale", "48-96")
    assert (overridden["scales"], overridden["flip"], overridden["view_aggregation"]) == ("none", False, "mean")
    assert overridden["aggregation"] == "lse" and overridden["working_scale"] == "48-96"
    for bad in ({"scales": [96, 192]}, {"flip": {"fcn": "yes"}}):
        sidecar.write_text(json.dumps(bad))
        assert build_archive.main(["--arch", "vgg11", "--head", "fcn", "--weights", str(mine), "--name", "m",
                                   "--export-path", str(tmp_path)]) == 2
        assert "mine.serving.json" in capsys.readouterr().err


def test_a_spec_with_an_unknown_option_head_or_arch_is_refused_before_any_weights_are_read():
    from anysize_tools.archive import ArchiveSpec, BuildError

    for fields in ({"head": "fcn", "handler": {"precison": "bf16"}}, {"head": "dense"}):
        with pytest.raises(BuildError, match="unknown"):
            ArchiveSpec(arch="vgg16", weights="imagenet", **fields)  # no download is attempted
    with pytest.raises(BuildError, match="unknown arch"):
        ArchiveSpec(arch="vgg17", head="fcn", weights="imagenet")


def test_builder_refuses_weights_of_another_architecture(vgg11_weights_file, tmp_path, capsys):
    assert build_archive.main(["--arch", "vgg13", "--head", "fcn", "--weights", str(vgg11_weights_file),
                               "--export-path", str(tmp_path)]) == 2
    assert "does not fit vgg13" in capsys.readouterr().err


def test_builder_fails_clearly_when_imagenet_weights_are_unavailable(empty_hub, tmp_path, capsys):
    assert build_archive.main(["--arch", "vgg13", "--head", "fcn", "--weights", "imagenet",
                               "--export-path", str(tmp_path)]) == 2
    assert "vgg13-19584684.pth" in capsys.readouterr().err
    assert not (tmp_path / "vgg13-fcn.mar").exists()


def test_builder_reads_custom_labels_for_any_class_count(vgg11_state_dict, tmp_path):
    state = dict(vgg11_state_dict)  # the session's weights, with a three-class fc8
    state["classifier.6.weight"] = state["classifier.6.weight"][:3].clone()
    state["classifier.6.bias"] = state["classifier.6.bias"][:3].clone()
    torch.save(state, tmp_path / "three.pth")
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    assert build_archive.main(["--arch", "vgg11", "--head", "fcn", "--weights", str(tmp_path / "three.pth"),
                               "--labels", str(tmp_path / "labels.txt"), "--export-path", str(tmp_path)]) == 0
    assert archive_contents(tmp_path / "vgg11-fcn.mar")["labels"] == {"0": "cat", "1": "dog", "2": "bird"}


def peak_rss_kb(code: str) -> int:
    wrapper = f"import resource\n{code}\n" \
              "print(max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))"
    out = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1])


def test_builder_holds_no_copy_of_the_weights_in_memory(vgg11_weights_file, tmp_path):
    """A 500 MB checkpoint must not be loaded to be packaged: peak memory of the builder and of the archiver it runs
    stays near that of importing torch."""
    baseline = peak_rss_kb("from anysize_tools import archive; import torchvision")
    building = peak_rss_kb(f"from anysize_tools import archive; archive.main(['--arch', 'vgg11', '--head', 'fcn', "
                           f"'--weights', {str(vgg11_weights_file)!r}, '--export-path', {str(tmp_path)!r}])")
    weights_kb = vgg11_weights_file.stat().st_size // 1024
    assert building - baseline < weights_kb // 4, (baseline, building, weights_kb)




def test_serve_skips_imagenet_models_with_a_notice_when_weights_are_missing(empty_hub, capsys):
    from anysize_tools import serve

    assert serve.imagenet_archives("vgg16") == []
    out = capsys.readouterr().out
    assert "Not serving vgg16-adaptive / vgg16-fcn" in out and "vgg16-397923af.pth" in out


def test_imagenet_is_refused_for_the_projects_own_architecture():
    with pytest.raises(WeightsUnavailable, match="no ImageNet weights"):
        imagenet_weights("demo")

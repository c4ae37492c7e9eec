"""The handler through a mock TorchServe context: per-request statuses, grouping by size, batch == single."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from helpers import MockContext, decode_rgb, encode, make_photo, reference_probabilities

from anysize.handler import SizeAgnosticVGGHandler
from anysize.request_formats import single_image
from anysize.weights import imagenet_categories


def handler_config(head, **options):
    return {"batchSize": 8, "handler": {"arch": "vgg11", "head": head, "weights": "test weights", "trained": False,
                                        "weights_file": "vgg11-test.pth", "topk": 5, **options}}


@pytest.fixture(scope="module")
def model_dir(vgg11_weights_file, tmp_path_factory):
    directory = tmp_path_factory.mktemp("model_dir")
    (directory / "vgg11-test.pth").symlink_to(vgg11_weights_file)
    labels = {str(i): name for i, name in enumerate(imagenet_categories())}
    (directory / "index_to_name.json").write_text(json.dumps(labels))
    return directory


@pytest.fixture(scope="module", params=["adaptive", "fcn"])
def handler(request, model_dir):
    instance = SizeAgnosticVGGHandler()
    instance.initialize(MockContext(model_dir, handler_config(request.param)))
    return instance


def run(handler, rows):
    context = MockContext(None, None)
    outputs = handler.handle(rows, context)
    assert len(outputs) == len(rows)
    assert all(context.content_types[i] == "application/json" for i in range(len(rows)))
    return [json.loads(out) for out in outputs], context.statuses


def test_bad_requests_do_not_affect_good_ones_in_the_same_batch(handler, vgg11_reference):
    good = encode(make_photo(64, 48, seed=5), "PNG")
    rows = [
        {"body": good},
        {"body": b""},
        {"body": "plain text"},  # TorchServe hands text/* bodies over as str
        {"body": {"image": "x"}},  # and application/json bodies as parsed JSON
        {"body": good[: len(good) // 2]},
        {"other_field": good},
        {"data": encode(make_photo(64, 48, seed=6), "JPEG")},
        {"file": encode(make_photo(80, 40, seed=7), "WEBP", lossless=True)},
    ]
    answers, statuses = run(handler, rows)
    expected_errors = {1: (400, "empty_body"), 2: (400, "not_an_image"), 3: (400, "bad_json_body"),
                       4: (400, "corrupt_image"), 5: (400, "missing_field")}
    for index, (status, code) in expected_errors.items():
        assert statuses[index] == (status, code)
        assert answers[index]["error"] == code and answers[index]["message"]
    head = handler.classifier.options.head
    for index in (0, 6, 7):
        assert index not in statuses  # 200 by default
        body = next(iter(rows[index].values()))
        expected = reference_probabilities(vgg11_reference, head, decode_rgb(body))
        answer = answers[index]
        assert answer["input_size"] == list(decode_rgb(body).shape[:2])
        assert [p["index"] for p in answer["predictions"]] == torch.topk(expected, 5).indices.tolist()
        for prediction in answer["predictions"]:
            assert abs(prediction["probability"] - expected[prediction["index"]].item()) <= 1e-4
        assert answer["warning"].startswith("untrained")
        assert answer["predictions"][0]["label"] == imagenet_categories()[answer["predictions"][0]["index"]]


def test_same_sized_images_share_a_forward_pass_and_equal_single_requests(handler):
    same = [encode(make_photo(64, 64, seed=s), "PNG") for s in range(4)]
    other = [encode(make_photo(96, 64, seed=9), "PNG"), encode(make_photo(64, 96, seed=10), "PNG")]
    passes = []
    hook = handler.classifier.model.features.register_forward_hook(
        lambda module, args, out: passes.append(args[0].shape[0]))
    try:
        batched, _ = run(handler, [{"body": b} for b in same + other])
        assert sorted(passes) == [1, 1, 4]
        singles = [run(handler, [{"body": b}])[0][0] for b in same + other]
    finally:
        hook.remove()
    for batch_answer, single_answer in zip(batched, singles):
        assert batch_answer["input_size"] == single_answer["input_size"]
        for a, b in zip(batch_answer["predictions"], single_answer["predictions"]):
            assert a["index"] == b["index"] and abs(a["probability"] - b["probability"]) <= 1e-5


def test_groups_are_split_to_keep_each_forward_pass_within_max_pixels(model_dir):
    instance = SizeAgnosticVGGHandler()
    instance.initialize(MockContext(model_dir, handler_config("fcn", max_pixels=3 * 64 * 64)))
    decoded = [torch.zeros(64, 64, 3, dtype=torch.uint8)] * 7 + [torch.zeros(32, 64, 3, dtype=torch.uint8)]
    assert instance.classifier.group(decoded) == [[0, 1, 2], [3, 4, 5], [6], [7]]


def test_response_names_model_arch_head_and_weights(handler):
    answers, _ = run(handler, [{"body": encode(make_photo(40, 40), "BMP")}])
    answer = answers[0]
    assert {k: answer[k] for k in ("model", "arch", "head", "weights")} == {
        "model": "vgg11-test", "arch": "vgg11", "head": handler.classifier.options.head, "weights": "test weights"}
    probabilities = [p["probability"] for p in answer["predictions"]]
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)


def test_request_body_prefers_data_then_file_then_raw_body():
    assert single_image({"file": b"f", "data": b"d", "body": b"b"}) == b"d"
    assert single_image({"file": b"f", "body": b"b"}) == b"f"
    assert single_image({"body": bytearray(b"b"), "topk": "3"}) == b"b"


def test_model_config_written_by_the_builder_is_accepted(tmp_path):
    from anysize.handler_config import HandlerOptions

    options = HandlerOptions.from_mapping({"arch": "vgg16", "head": "fcn", "channels_last": "true", "topk": 3})
    assert options.channels_last is True and options.topk == 3 and options.precision == "fp32"
    assert HandlerOptions.from_mapping(yaml.safe_load(yaml.safe_dump(options.to_mapping()))) == options
    with pytest.raises(ValueError, match="unknown handler options"):
        HandlerOptions.from_mapping({"arch": "vgg16", "head": "fcn", "top_k": 3})
    with pytest.raises(ValueError, match="precision"):
        HandlerOptions(arch="vgg16", head="fcn", precision="int4")


def test_device_is_the_assigned_gpu_only_when_cuda_is_available():
    expected = "cuda:1" if torch.cuda.is_available() else "cpu"
    assert str(SizeAgnosticVGGHandler.choose_device(1)) == expected
    assert str(SizeAgnosticVGGHandler.choose_device(None)) == "cpu"


@pytest.mark.parametrize("options,tolerance", [({"channels_last": True}, 1e-4), ({"precision": "tf32"}, 1e-4),
                                               ({"precision": "bf16"}, 0.05)])
def test_precision_and_memory_format_options(model_dir, vgg11_reference, options, tolerance):
    instance = SizeAgnosticVGGHandler()
    instance.initialize(MockContext(model_dir, handler_config("fcn", **options)))
    body = encode(make_photo(320, 288, seed=11), "PNG")  # a 10x9 feature map: fc6 slides over 4x3 positions
    answer = run(instance, [{"body": body}])[0][0]
    expected = reference_probabilities(vgg11_reference, "fcn", decode_rgb(body))
    for prediction in answer["predictions"]:
        assert abs(prediction["probability"] - expected[prediction["index"]].item()) <= tolerance


def test_bf16_runs_the_convolutions_in_bfloat16(model_dir):
    """Not only answers close to fp32's: the trunk's convolutions must really run in bf16 (a silent fp32 fallback
    would pass an accuracy check)."""
    dtypes = {}
    for precision in ("fp32", "bf16"):
        instance = SizeAgnosticVGGHandler()
        instance.initialize(MockContext(model_dir, handler_config("fcn", precision=precision)))
        seen = []
        for module in instance.classifier.model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
        run(instance, [{"body": encode(make_photo(64, 64, seed=3), "PNG")}])
        dtypes[precision] = set(seen)
    assert dtypes == {"fp32": {torch.float32}, "bf16": {torch.bfloat16}}


@pytest.mark.parametrize("precision, tf32", [("fp32", False), ("tf32", True), ("bf16", False), ("fp16", False)])
def test_each_precision_sets_the_tf32_flags_it_depends_on(demo_handler, precision, tf32):
    """PyTorch's default leaves cuDNN convolutions in TF32 on a GPU: an fp32 archive must turn that off itself."""
    flags = torch.backends.cudnn, torch.backends.cuda.matmul
    before = [flag.allow_tf32 for flag in flags]
    try:
        for flag in flags:
            flag.allow_tf32 = not tf32
        demo_handler(precision=precision)
        assert [flag.allow_tf32 for flag in flags] == [tf32, tf32]
    finally:
        for flag, value in zip(flags, before):
            flag.allow_tf32 = value


def test_non_finite_scores_are_an_error_not_invalid_json(handler, monkeypatch):
    monkeypatch.setattr(handler.classifier, "forward", lambda pixels: torch.full((len(pixels), 1000), float("nan")))
    answers, statuses = run(handler, [{"body": encode(make_photo(40, 40), "PNG")}])
    assert statuses[0] == (500, "inference_failed") and answers[0]["error"] == "inference_failed"


def test_a_cuda_error_ends_the_worker_so_torchserve_starts_a_fresh_one(handler, monkeypatch):
    from anysize import classifier

    def broken(pixels):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    exits = []
    monkeypatch.setattr(handler.classifier, "forward", broken)
    monkeypatch.setattr(classifier.os, "_exit", exits.append)
    run(handler, [{"body": encode(make_photo(40, 40), "PNG")}])
    assert exits == [1]


def test_out_of_memory_fails_only_the_images_of_that_forward_pass(handler, monkeypatch):
    real_forward = handler.classifier.forward

    def forward(pixels):
        if pixels.shape[1] > 100:  # pretend the larger images do not fit in memory
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99999999999 bytes")
        return real_forward(pixels)

    monkeypatch.setattr(handler.classifier, "forward", forward)
    rows = [{"body": encode(make_photo(64, 64, seed=1), "PNG")}, {"body": encode(make_photo(200, 150), "PNG")}]
    answers, statuses = run(handler, rows)
    assert 0 not in statuses and answers[0]["predictions"]
    assert statuses[1] == (507, "out_of_memory") and answers[1]["error"] == "out_of_memory"
    answers, statuses = run(handler, rows[:1])  # and the handler goes on serving
    assert not statuses and answers[0]["predictions"]


def test_cpu_threads_split_the_cores_between_workers(model_dir):
    from anysize.handler import cpu_threads, usable_cores

    cores = usable_cores()  # the affinity mask capped by a cgroup quota, as the handler counts them
    assert cpu_threads(0, 1) == cores
    assert cpu_threads(0, 2) == max(1, cores // 2)
    assert cpu_threads(0, 64) == 1
    assert cpu_threads(3, 2) == 3  # an explicit handler.cpu_threads wins
    before = torch.get_num_threads()
    try:
        instance = SizeAgnosticVGGHandler()
        instance.initialize(MockContext(model_dir, {**handler_config("fcn"), "maxWorkers": 2}))
        assert torch.get_num_threads() == max(1, cores // 2)
        instance.initialize(MockContext(model_dir, handler_config("fcn", cpu_threads=1)))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_cpu_threads_respect_a_container_cpu_limit(tmp_path, monkeypatch):
    from anysize import handler as vgg_handler

    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")  # a limit of 1.5 CPUs
    assert vgg_handler.cgroup_cpu_limit(str(cpu_max)) == 1.5
    cpu_max.write_text("max 100000\n")
    assert vgg_handler.cgroup_cpu_limit(str(cpu_max)) is None
    assert vgg_handler.cgroup_cpu_limit(str(tmp_path / "missing")) is None
    monkeypatch.setattr(vgg_handler.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(vgg_handler, "cgroup_cpu_limit", lambda: 4.0)
    assert vgg_handler.cpu_threads(0, 1) == 4 and vgg_handler.cpu_threads(0, 2) == 2
    monkeypatch.setattr(vgg_handler, "cgroup_cpu_limit", lambda: None)
    assert vgg_handler.cpu_threads(0, 2) == 32

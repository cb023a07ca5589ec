import json

import pytest
import torch

from resnet.cli import main

TINY = ["bench", "--arch", "resnet18", "--image-size", "32", "--batch-size", "4", "--steps", "2", "--warmup", "1",
        "--rounds", "2", "--images", "8", "--generated-size", "40", "--workers", "1", "--device", "cpu"]


@pytest.fixture
def one_thread():
    # Two intra-op threads on a loaded two-core machine spend most of a tiny step waiting
    # for each other; one thread keeps this test fast anywhere (it asserts no timings).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_bench_json_has_every_figure(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setenv("RESNET_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench.json"
    assert main([*TINY, "--json", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == result

    e2e = result["end_to_end"]
    assert all(positive(e2e[key]) for key in ("tutorial", "ours", "ratio"))
    assert len(e2e["rounds"]["tutorial"]) == len(e2e["rounds"]["ours"]) == 2
    assert positive(e2e["decode"]["seconds"]) and e2e["decode"]["images"] == 8
    assert positive(e2e["ours_of_model_only"]) and positive(e2e["tutorial_of_model_only"])

    model_only = result["model_only"]
    assert "fp32" in model_only
    assert e2e["ours_setup"]["precision"] in model_only
    for speeds in model_only.values():
        assert set(speeds) == {"nchw", "channels_last"}
        assert all(positive(v) for v in speeds.values())

    assert "model_only_compiled" not in result  # only with --compile
    data = result["data_only"]
    assert all(positive(data[key]) for key in ("tutorial", "ours", "ratio"))

    source = result["config"]["source"]
    assert source["kind"] == "generated" and source["images"] == 8
    assert (tmp_path / "cache" / "bench-jpegs").is_dir()  # generated under RESNET_CACHE, not ~/.cache


def test_generated_jpegs_have_the_tutorial_shape(tmp_path, monkeypatch):
    from PIL import Image

    from resnet.tools.bench import generate_jpegs

    monkeypatch.setenv("RESNET_CACHE", str(tmp_path))
    root = generate_jpegs(2, 60)
    sizes = sorted(Image.open(p).size for p in root.rglob("*.jpg"))
    assert sizes == [(60, 80), (80, 60)]
    assert generate_jpegs(2, 60) == root  # made once, then reused


def test_bench_reads_an_image_folder_subset(tmp_path, monkeypatch):
    from resnet.tools.bench import BenchOptions, bench_source, generate_jpegs

    monkeypatch.setenv("RESNET_CACHE", str(tmp_path))
    root = generate_jpegs(12, 40)
    files, num_classes, source = bench_source(BenchOptions(data_dir=str(root), images=5))
    assert len(files) == 5 and source == {**source, "kind": "imagefolder", "images": 5, "of": 12}
    assert num_classes == 10


def test_bench_rejects_a_too_small_image_size(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESNET_CACHE", str(tmp_path))
    assert main(["bench", "--image-size", "16"]) == 2
    assert "--image-size must be at least 32" in capsys.readouterr().err


def test_bench_options_reach_the_benchmark(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr("resnet.tools.bench.run",
                        lambda options, as_json, out: seen.update(options=options, json=as_json))
    assert main(["bench", "--recipe", "default", "--images", "5", "--generated-size", "48", "--json"]) == 0
    assert (seen["options"].recipe, seen["options"].images, seen["options"].generated_size) == ("default", 5, 48)
    assert seen["json"] is True
    with pytest.raises(SystemExit):
        main(["bench", "--recipe", "seed"])  # the tutorial's recipe is called "tutorial" now
    err = capsys.readouterr().err
    assert "invalid choice: 'seed'" in err and "tutorial" in err


@pytest.mark.slow
def test_bench_compile_times_the_compiled_step_beside_the_eager_one(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setenv("RESNET_CACHE", str(tmp_path / "cache"))
    assert main([*TINY, "--rounds", "1", "--compile", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    compiled = result["model_only_compiled"]
    assert compiled["precision"] in result["model_only"] and compiled["memory_format"] == "channels_last"
    assert positive(compiled["compile_seconds"]) and positive(compiled["images_per_s"])
    assert len(compiled["rounds"]) == 1

    from resnet.tools.bench import format_report
    assert "compiled (" in format_report(result) and "s of compiling steps" in format_report(result)


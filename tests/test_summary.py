import pytest

from resnet.cli import main


def test_summary_prints_tutorial_totals(capsys):
    assert main(["summary", "resnet34"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 21,797,672" in out
    assert "Total mult-adds (G): 3.66" in out
    assert "Units." not in out
    assert "[1, 64, 112, 112]" in out


def test_summary_options(capsys):
    assert main(["summary", "resnet18", "--image-size", "64", "96", "--num-classes", "10", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "[1, 3, 64, 96]" not in out  # depth 1 shows stages, not the input
    assert "[1, 10]" in out
    assert "BasicBlock" not in out
    assert "Total params: 11,181,642" in out  # 11,689,512 - 513,000 + 5,130


def test_list_prints_every_model(capsys):
    assert main(["list", "--image-size", "64"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = ["resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
    assert [line.split()[0] for line in lines[1:]] == names
    assert lines[1 + names.index("resnet34")].split()[1] == "21,797,672"


def test_unknown_arch_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["summary", "resnet19"])
    assert exit.value.code == 2
    assert "invalid choice: 'resnet19'" in capsys.readouterr().err


def test_summary_of_the_small_stem(capsys):
    assert main(["summary", "resnet18", "--stem", "small", "--image-size", "32", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 11,173,962" in out  # 11,181,642 - 64 * 3 * (7 * 7 - 3 * 3)
    assert "[1, 512, 4, 4]" in out  # layer4 at 32 px: 4x4, not 1x1

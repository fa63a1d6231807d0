import pytest

import cli
from tests.conftest import run_cli


def test_list_and_show_in_a_real_process():
    proc = run_cli("list")
    assert proc.returncode == 0
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert {"resnet_small", "mlp", "mlp_dropconnect"} <= set(names)
    proc = run_cli("show", "recipe=resnet_small", "optimizer.lr=0.05")
    assert proc.returncode == 0 and "lr: 0.05" in proc.stdout
    assert proc.stderr.strip() == ""  # TensorFlow's start-up notices are kept off the terminal


@pytest.mark.parametrize(
    "args, expected",
    [
        (["run", "recipe=resnet_small", "trainer.epoch=3"], "did you mean 'trainer.epochs'"),
        (["run", "recipe=resnet_small", "trainer.epochs=ten"], "trainer.epochs=ten: expected an integer"),
        (["run", "recipe=resnet_small", "optimizer.name=sgdd"], "did you mean 'sgd'"),
        (["run", "recipe=resnt_small"], "did you mean 'resnet_small'"),
        (["run", "optimizer.lr=0.1"], "no recipe given"),
        (["rnu", "recipe=resnet_small"], "did you mean 'run'"),
        (["run", "recipe=resnet_small", "data.name=cifar10", "data.path=/no/such/file"], "no such file"),
    ],
)
def test_errors_are_one_line_with_status_2(capsys, args, expected):
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_help():
    assert cli.main(["--help"]) == 0
    assert cli.main([]) == 2

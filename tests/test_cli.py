"""`--config=NAME|PATH`, flagfiles nested relative to their file, and the `mtl-keras` command (fast, no training)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env

from mtl_keras import cli, flagfiles
from mtl_keras.flags import config_from_args

CONFIG_DIR = REPO / "mtl_keras" / "configs"


def _one_error_line(capsys, prog: str) -> str:
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith(f"{prog}: error: "), captured.err
    return captured.err


# ------------------------------------------------------------------------------------ --config resolution

def test_config_names_and_paths_resolve_to_the_shipped_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anywhere but the clone
    assert flagfiles.resolve("quickstart") == CONFIG_DIR / "quickstart.flags"
    assert flagfiles.resolve("quickstart.flags") == CONFIG_DIR / "quickstart.flags"
    assert flagfiles.resolve("cifar10_study/a_vit_mu4") == CONFIG_DIR / "cifar10_study" / "a_vit_mu4.flags"
    assert flagfiles.resolve("cifar10_mtl_vs_stl/mtl_g0.1").name == "mtl_g0.1.flags"  # a dot in the name
    (tmp_path / "quickstart").write_text("--epochs=2\n")  # a file here wins over the shipped name
    assert flagfiles.resolve("quickstart").resolve() == tmp_path / "quickstart"
    assert flagfiles.resolve(str(CONFIG_DIR / "mtl_vit_c10.flags")) == CONFIG_DIR / "mtl_vit_c10.flags"


def test_names_list_every_shipped_config_and_nothing_outside():
    names = flagfiles.names()
    assert len(names) == len(list(CONFIG_DIR.rglob("*.flags"))) and len(names) > 50
    assert {"quickstart", "mtl_vit_c10", "cifar10_study/a_vit_mu4", "fmnist_hierarchy/mtl_both"} <= set(names)
    assert names.index("quickstart") < names.index("base/seed_recipe")  # top level first
    assert flagfiles.shipped("../flags") is None and flagfiles.shipped("/etc/passwd") is None


@pytest.mark.parametrize("value,expected", [
    ("quickstar", "did you mean quickstart?"),
    ("configs/mtl_vit_c10.flags", "did you mean mtl_vit_c10"),  # the old clone path names its successor
    ("cifar10_study/a_vit_mu5", "cifar10_study/a_vit_mu4"),
    ("zzzz", "choose one of "),
])
def test_an_unknown_config_is_one_line_with_the_closest_names(value, expected):
    with pytest.raises(flagfiles.FlagfileError) as e:
        flagfiles.resolve(value)
    line = str(e.value)
    assert line.startswith(f"--config={value}: no such config or file; ") and expected in line and "\n" not in line
    if expected == "choose one of ":
        assert "quickstart" in line and "cifar10_study/..." in line and "seed_vit_c10_*" in line


def test_shipped_configs_nest_relative_to_their_own_file():
    nested = 0
    for path in CONFIG_DIR.rglob("*.flags"):
        for line in path.read_text().splitlines():
            if line.startswith("--flagfile="):
                target = line.split("=", 1)[1]
                assert not target.startswith(("configs/", "/")), f"{path}: {line}"
                assert (path.parent / target).is_file(), f"{path}: {line}"
                nested += 1
    assert nested > 50


# --------------------------------------------------------------------------------------- flagfile expansion

def test_nested_flagfiles_resolve_relative_to_the_including_file_from_any_directory(tmp_path, monkeypatch):
    (tmp_path / "cfg" / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "cfg" / "sub" / "base.flags").write_text("# base\n--epochs=7\n--batch_size=32\n")
    (tmp_path / "cfg" / "top.flags").write_text("// c\n--flagfile=sub/base.flags\n\n  --epochs=5  \n")
    monkeypatch.chdir(tmp_path / "elsewhere")
    argv = flagfiles.expand(["train", "--epochs=1", "--flagfile=../cfg/top.flags", "--seed=3"])
    assert argv == ["train", "--epochs=1", "--epochs=7", "--batch_size=32", "--epochs=5", "--seed=3"]
    config = config_from_args(["--flagfile=../cfg/top.flags", "--batch_size=8"])
    assert (config.optim.epochs, config.optim.batch_size) == (5, 8)  # the file's last word, then the command line


def test_shipped_configs_parse_from_another_directory_through_two_levels(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = config_from_args(["--config=cifar10_study/a_vit_mu4_b64"])  # -> budget_a -> base
    assert (config.optim.batch_size, config.optim.epochs, config.data.max_train_examples) == (64, 5, 10000)
    assert config.data.dataset == "folder"  # from cifar10_study/base.flags
    assert config_from_args(["--config", "quickstart", "--epochs=2"]).optim.epochs == 2


def test_expansion_stops_at_double_dash_and_leaves_config_alone_where_it_is_not_a_flag(tmp_path):
    path = tmp_path / "a.flags"
    path.write_text("--epochs=2\n")
    assert flagfiles.expand(["p", f"--flagfile={path}", "--", f"--flagfile={path}"]) == \
        ["p", "--epochs=2", "--", f"--flagfile={path}"]
    assert flagfiles.expand(["p", "--config=quickstart"], config=False) == ["p", "--config=quickstart"]


def test_the_configs_folder_command_works_from_any_folder(tmp_path, monkeypatch):
    # `--flagfile=configs/NAME.flags` is the long-documented command; with no such file here it names the
    # shipped config, and a real file of that path still wins.
    monkeypatch.chdir(tmp_path)
    cfg = config_from_args(["--flagfile=configs/mtl_vit_c10_cpu.flags"])
    assert cfg == config_from_args(["--config=mtl_vit_c10_cpu"]) and cfg.optim.time_budget == 900
    assert config_from_args(["--flagfile=configs/cifar10_study/a_vit_mu4.flags"]).model.variant == "Mu/4"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mtl_vit_c10_cpu.flags").write_text("--epochs=3\n")
    assert config_from_args(["--flagfile=configs/mtl_vit_c10_cpu.flags"]).optim.epochs == 3
    with pytest.raises(flagfiles.FlagfileError, match="--flagfile=configs/nope.flags: no such file"):
        flagfiles.expand(["p", "--flagfile=configs/nope.flags"])


def test_bad_flagfiles_are_one_line_errors(tmp_path):
    (tmp_path / "loop.flags").write_text("--flagfile=loop2.flags\n")
    (tmp_path / "loop2.flags").write_text("--flagfile=loop.flags\n")
    (tmp_path / "binary.flags").write_bytes(b"\xff\xfe\x00bad")
    (tmp_path / "top.flags").write_text("--flagfile=missing.flags\n")
    cases = [(f"--flagfile={tmp_path / 'loop.flags'}", "includes itself"),
             (f"--flagfile={tmp_path / 'binary.flags'}", "cannot be read"),
             (f"--flagfile={tmp_path / 'top.flags'}", f"--flagfile=missing.flags: no such file (from {tmp_path}"),
             (f"--config={tmp_path / 'nope.flags'}", "no such config or file"),
             ("--config", "--config needs a value")]
    for arg, expected in cases:
        with pytest.raises(flagfiles.FlagfileError, match=None) as e:
            flagfiles.expand(["p", arg])
        assert expected in str(e.value) and "\n" not in str(e.value), (arg, str(e.value))


# -------------------------------------------------------------------------------------- mtl-keras configs

def test_configs_lists_every_config_with_its_purpose(capsys):
    assert cli.main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == flagfiles.names()
    quick = next(line for line in lines if line.startswith("quickstart "))
    assert "Quick start: a small two-head ViT" in quick
    assert all(len(line.split(None, 1)) == 2 for line in lines), "every config has a first comment line"


def test_configs_show_prints_the_file(capsys):
    assert cli.main(["configs", "show", "cifar10_study/budget_a"]) == 0
    assert capsys.readouterr().out == (CONFIG_DIR / "cifar10_study" / "budget_a.flags").read_text()


def test_configs_copy_writes_a_copy_that_works_elsewhere_and_never_overwrites(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["configs", "copy", "cifar10_study/a_vit_mu4_b64", "mine.flags"]) == 0
    text = (tmp_path / "mine.flags").read_text()
    assert "--config=cifar10_study/budget_a\n" in text and "--flagfile" not in text
    assert config_from_args(["--config=mine.flags"]) == config_from_args(["--config=cifar10_study/a_vit_mu4_b64"])
    capsys.readouterr()
    (tmp_path / "mine.flags").write_text("--epochs=9\n")
    assert cli.main(["configs", "copy", "quickstart", "mine.flags"]) == 2
    assert "mine.flags exists; it is not overwritten" in _one_error_line(capsys, "mtl-keras configs")
    assert (tmp_path / "mine.flags").read_text() == "--epochs=9\n"
    (tmp_path / "d").mkdir()
    assert cli.main(["configs", "copy", "quickstart", "d"]) == 0  # into a folder: under the config's file name
    assert (tmp_path / "d" / "quickstart.flags").read_text() == (CONFIG_DIR / "quickstart.flags").read_text()


@pytest.mark.parametrize("args,expected", [
    (["configs", "show", "quickstar"], "quickstar: no such config or file; did you mean quickstart?"),
    (["configs", "copy", "nope", "x.flags"], "nope: no such config or file"),
    (["configs", "edit", "quickstart"], "unknown action 'edit'; choose one of show, copy"),
    (["configs", "show"], "usage: mtl-keras configs [show NAME | copy NAME DEST]"),
    (["configs", "copy", "quickstart", "no_such_dir/x.flags"], "no_such_dir is not a folder"),
])
def test_configs_errors_are_one_line_with_exit_status_2(tmp_path, monkeypatch, capsys, args, expected):
    monkeypatch.chdir(tmp_path)
    assert cli.main(args) == 2
    assert expected in _one_error_line(capsys, "mtl-keras configs")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_an_unknown_subcommand_names_the_choices(capsys):
    assert cli.main(["trian"]) == 2
    err = _one_error_line(capsys, "mtl-keras")
    assert "unknown subcommand 'trian'; choose one of train, export, predict, check, experiments, configs" in err
    assert cli.main([]) == 2 and "usage: mtl-keras SUBCOMMAND" in capsys.readouterr().err


def test_configs_starts_without_tensorflow():
    code = ("import sys; from mtl_keras import cli; assert cli.main(['configs']) == 0; "
            "heavy = {'tensorflow', 'keras', 'jax', 'numpy'} & set(sys.modules); assert not heavy, heavy")
    proc = subprocess.run(check=False, args=[sys.executable, "-c", code], cwd=REPO, env=subprocess_env(),
                          capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_train_with_an_unknown_config_is_one_line_exit_2_and_writes_nothing(tmp_path):
    proc = subprocess.run(check=False, args=[sys.executable, "-m", "mtl_keras.cli", "train", "--config=quikstart",
                           f"--workdir={tmp_path / 'w'}", f"--export_dir={tmp_path / 'e'}"], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == ("train: error: --config=quikstart: no such config or file; did "
                                                   "you mean quickstart? (`mtl-keras configs` lists them)")
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------------------------- experiments --grid

def test_grid_takes_config_names_and_globs_of_them(tmp_path, monkeypatch):
    from mtl_keras.errors import ExperimentError
    from mtl_keras.experiments.runner import expand_grid

    monkeypatch.chdir(tmp_path)
    assert [p.name for p in expand_grid("fmnist_*")] == ["fmnist_mtl.flags", "fmnist_stl_coarse.flags",
                                                        "fmnist_stl_fine.flags"]
    assert [p.stem for p in expand_grid("fmnist_hierarchy/[ms]*")] == [
        "mtl_both", "mtl_famo", "mtl_learned", "mtl_marginal", "stl_coarse", "stl_fine"]
    assert expand_grid("quickstart,cifar10_study/a_vit_mu4") == [CONFIG_DIR / "quickstart.flags",
                                                                 CONFIG_DIR / "cifar10_study" / "a_vit_mu4.flags"]
    with pytest.raises(ExperimentError, match="'quikstart' matches no flagfile .did you mean quickstart"):
        expand_grid("quikstart")
    with pytest.raises(ExperimentError, match="'nothing_\\*' matches no flagfile"):
        expand_grid("nothing_*")


def test_help_of_a_subcommand_lists_its_own_flags():
    proc = subprocess.run(check=False, args=[sys.executable, "-m", "mtl_keras.cli", "check", "--help"], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert "--saved_model" in proc.stdout and "--[no]verbose" in proc.stdout, proc.stderr[-2000:]  # (absl: exit 1)
    assert "--epochs" not in proc.stdout and "--config" not in proc.stdout

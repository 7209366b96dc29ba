"""Every CLI ends a bad flag value, from the command line or a flagfile, in one `PROG: error: --NAME...` line."""

import re
import subprocess
import sys

import pytest

from conftest import REPO, TRAIN_THEN_LOADED, parsed_in_process, run_module, subprocess_env

# TensorFlow's C++ startup lines reach fd 2 when a program imports it before its flags are checked, before any
# Python code could stop them; they are not the program's output.
TF_STARTUP = re.compile(r"WARNING: All log messages before absl::InitializeLog|[IWEF]\d{4} ")


def _error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip() and not TF_STARTUP.match(line)]


@pytest.mark.parametrize("flag", ["--gamma=1.5", "--learning_rate=nan", "--gamma=nan", "--warmup_epochs=inf",
                                  "--dropout=nan", "--grad_clip_norm=nan", "--validation_fraction=nan",
                                  "--dataset=mnist", "--epochs=0", "--loss_weighting=dwa --task=fine"])
def test_train_bad_flag_is_one_line(flag, capsys):
    status, lines = parsed_in_process("train", flag.split(), capsys)
    assert status == 2 and len(lines) == 1 and lines[0].startswith(f"train: error: {flag.split('=')[0]}"), lines


# The real CLIs: a few cases per program, which fail before TensorFlow is imported (a Python importing it costs
# seconds); every parse runs in-process above and below.


def test_train_cli_bad_flag_is_one_line_and_writes_nothing(tmp_path):
    proc = run_module("mtl_keras.train", "--gamma=1.5", f"--workdir={tmp_path / 'w'}")
    assert proc.returncode == 2 and _error_lines(proc)[0].startswith("train: error: --gamma"), proc.stderr
    assert len(_error_lines(proc)) == 1, proc.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("args, message", [
    (["--variant=Huge/4"], "--variant: unknown ViT variant 'Huge/4': use NAME/PATCH with NAME in "),
    (["--model=cct", "--variant=Mu/4"], "--variant: unknown CCT variant 'Mu/4': use LAYERS/KxN with LAYERS in "),
    (["--model=seed_vit", "--stem_init=whitened"], "--stem_init=whitened needs --model=vit or cct (a first "),
    (["--progressive_size=30"], "--progressive_size=30 is not a multiple of the patch size 4 of --variant=Mu/4"),
])
def test_size_flags_are_checked_before_any_backend_loads(args, message, tmp_path):
    """The checks that read the trunks' size tables (mtl_keras.variants) answer in one line without Keras or a
    backend, so a mistyped --variant costs no TensorFlow start-up."""
    proc = subprocess.run([sys.executable, "-c", TRAIN_THEN_LOADED, *args, f"--workdir={tmp_path / 'w'}"],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines()[-1] == "EXIT 2 []", proc.stdout + proc.stderr[-2000:]
    [line] = _error_lines(proc)
    assert line.startswith("train: error: ") and message in line, line
    assert not (tmp_path / "w").exists()


def test_bad_flag_in_a_flagfile_parses_to_one_line(tmp_path, capsys):
    (tmp_path / "bad.flags").write_text("--epochs=1\n--learning_rate=nan\n")
    status, lines = parsed_in_process("train", [f"--flagfile={tmp_path / 'bad.flags'}"], capsys)
    assert status == 2 and lines == ["train: error: --learning_rate must be a finite number"], lines


@pytest.mark.parametrize("prog,args,line", [
    ("export", ["--atol=nan"], "export: error: --atol"),
    ("export", ["--top_k=0"], "export: error: --top_k"),
    ("export", ["--onnx_converter=torch"], "export: error: --onnx_converter"),
    ("export", ["--version=9223372036854775808"], "export: error: --version"),  # beyond int64
    ("check_onnx", ["--saved_model=s", "--onnx=o", "--int8_max_drop=-1"], "check_onnx: error: --int8_max_drop"),
    ("experiments", ["--grid=configs/quickstart.flags", "--gamma=nan"], "experiments: error: --gamma"),
])
def test_every_program_parses_a_bad_flag_to_one_line(prog, args, line, capsys):
    status, lines = parsed_in_process(prog, args, capsys)
    assert status == 2 and len(lines) == 1 and lines[0].startswith(line), lines


@pytest.mark.parametrize("module,args,line", [  # each program's CLI end to end (the parse: in-process above)
    ("mtl_keras.export", ["--atol=nan"], "export: error: --atol"),
    ("mtl_keras.export", ["--version=9223372036854775808"], "export: error: --version"),
    ("mtl_keras.check_onnx", ["--saved_model=s", "--onnx=o", "--int8_max_drop=-1"],
     "check_onnx: error: --int8_max_drop"),
    ("mtl_keras.predict", ["--top_k=0", "image.png"], "predict: error: --top_k"),
    ("mtl_keras.predict", ["--max_image_pixels=-1", "image.png"], "predict: error: --max_image_pixels"),
])  # (experiments: its parse in-process above, its CLI end to end in tests/test_experiments.py)
def test_every_cli_bad_flag_is_one_line(tmp_path, module, args, line):
    proc = run_module(module, *args, f"--workdir={tmp_path / 'w'}" if module == "mtl_keras.export" else
                      f"--results_dir={tmp_path / 'w'}" if module == "mtl_keras.experiments" else "--json")
    lines = _error_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(line), proc.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("args,line", [
    # A newline in a value would replay from flags.txt as extra flags.
    (["--workdir=w\n--epochs=1"], "--workdir must be one line (it holds a line break)"),
    (["--data_dir=d\r--learning_rate=9"], "--data_dir must be one line (it holds a line break)"),
    # numpy's global seed refuses -1 and 2**32 with a traceback; sizes beyond 1024 px ran out of memory.
    (["--seed=-1"], "--seed=-1: -1 is not an integer in the range [0, 2147483647]"),
    (["--seed=1099511627776"], "--seed=1099511627776: 1099511627776 is not an integer in the range [0, 2147483647]"),
    (["--image_size=100000"], "--image_size=100000: 100000 is not an integer in the range [8, 1024]"),
    (["--folder_image_size=4096"], "--folder_image_size=4096: 4096 is not an integer in the range [8, 1024]"),
    (["--max_image_pixels=0"], "--max_image_pixels=0: 0 is not an integer in the range [1, 1000000000]"),
])
def test_out_of_range_and_multiline_values_are_one_line_errors(args, line):
    # In-process (the CLI's one-line plumbing is tested above): the parse train runs, and the line it prints.
    from absl import flags

    from mtl_keras import flags as mtl_flags

    with pytest.raises(flags.IllegalFlagValueError) as err:
        mtl_flags.config_from_args(args)
    assert mtl_flags.error_line(err.value) == line


def test_flags_txt_replays_to_the_same_config(tmp_path):
    # What the newline check protects: flags.txt, one flag per line, gives back the run's config.
    from mtl_keras import config
    from mtl_keras import flags as mtl_flags

    cfg = mtl_flags.config_from_args(["--workdir=a b/c", "--seed=2147483647", "--augment=flip_crop,mixup"])
    (tmp_path / "flags.txt").write_text(mtl_flags.flagfile_text(cfg))
    assert config.flat(mtl_flags.config_from_args([f"--flagfile={tmp_path / 'flags.txt'}"])) == config.flat(cfg)

"""Bad input never passes silently: each row is a mistake a careful new user makes, with the
error type and a phrase of the message that names the problem or the fix."""

import json

import pytest
import torch
from safetensors.torch import save_file

from safealign_lib import data, evaluation, models
from safealign_lib.adapters import finetune, lora_io
from safealign_lib.config import LoraSettings
from safealign_lib.course import metrics_io, setup
from safealign_lib.data import loaders
from safealign_lib.evaluation.judges import CallableJudge, ExactJudge, KeywordJudge, Verdict
from safealign_lib.methods import diem, salora
from safealign_lib.tooling import cli, runner


def _write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def _saved_model(tiny_lm, folder):
    model, tok = tiny_lm
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


# (id, function of (tmp_path, tiny_lm), expected error, phrase in the message)
CASES = [
    ("empty keyword", lambda t, lm: KeywordJudge([""]), ValueError, "match every response"),
    ("empty keyword list", lambda t, lm: KeywordJudge([]), ValueError, "empty"),
    (
        "judge: fewer responses",
        lambda t, lm: KeywordJudge("gcg")(["a", "b"], ["x"]),
        ValueError,
        "2 prompts but 1 responses",
    ),
    ("judge: one string", lambda t, lm: KeywordJudge("gcg")("a", "x"), TypeError, "not one string"),
    (
        "callable judge: fewer responses",
        lambda t, lm: CallableJudge(lambda p, r: [True])(["a", "b"], ["x"]),
        ValueError,
        "responses",
    ),
    (
        "exact judge: mismatched",
        lambda t, lm: ExactJudge().verdicts(["a"], []),
        ValueError,
        "1 prompts but 0",
    ),
    (
        "refusal eval of no prompts",
        lambda t, lm: evaluation.first_token_refusal_prob(lm[0], lm[1], []),
        ValueError,
        "No prompts",
    ),
    (
        "refusal eval of one string",
        lambda t, lm: evaluation.refusal_eval(lm[0], lm[1], "How do I bake?"),
        TypeError,
        "list of prompts",
    ),
    ("subsample n=-1", lambda t, lm: data.subsample([], -1), ValueError, "non-negative"),
    (
        "missing split",
        lambda t, lm: data.load_split("no_such_split"),
        FileNotFoundError,
        "safealign data build",
    ),
    (
        "AdvBench row without target",
        lambda t, lm: loaders.load_advbench(_write(t / "a.csv", "goal,target\nDo x,\n")),
        ValueError,
        "record 1 has no text in field 'target'",
    ),
    (
        "AdvBench not UTF-8",
        lambda t, lm: loaders.load_advbench(
            _write(t / "a.csv", "goal,target\ncaf\xe9,x\n", "latin-1")
        ),
        ValueError,
        "not UTF-8",
    ),
    (
        "Alpaca later record without instruction",
        lambda t, lm: loaders.load_alpaca(
            _write(
                t / "a.json",
                json.dumps(
                    [{"instruction": "a", "input": "", "output": "b"}, {"input": "", "output": "c"}]
                ),
            )
        ),
        ValueError,
        "record 2 has no text in field 'instruction'",
    ),
    (
        "Alpaca list of strings",
        lambda t, lm: loaders.load_alpaca(_write(t / "a.json", json.dumps(["a", "b"]))),
        ValueError,
        "record 1 is a str",
    ),
    (
        "bad JSONL line",
        lambda t, lm: loaders.load_dialogsum(
            _write(t / "d.jsonl", '{"dialogue": "a", "summary": "b"}\n{oops\n')
        ),
        ValueError,
        "line 2 is not valid JSON",
    ),
    (
        "BeaverTails unknown is_safe",
        lambda t, lm: loaders.load_beavertails(
            _write(t / "b.json", json.dumps([{"prompt": "p", "response": "r", "is_safe": "maybe"}]))
        ),
        ValueError,
        "is_safe='maybe'",
    ),
    (
        "mistyped local path with one slash",
        lambda t, lm: models.load_model("organism/chat"),
        FileNotFoundError,
        "hub downloads are off",
    ),
    (
        "folder without tokenizer files",
        lambda t, lm: (lm[0].save_pretrained(t / "m"), models.load_tokenizer(t / "m")),
        FileNotFoundError,
        "No tokenizer files",
    ),
    (
        "empty model.safetensors",
        lambda t, lm: (
            _saved_model(lm, t / "m"),
            _write(t / "m" / "model.safetensors", ""),
            models.load_model(t / "m"),
        ),
        ValueError,
        "model.safetensors is not a readable",
    ),
    (
        "corrupt config.json",
        lambda t, lm: (
            _saved_model(lm, t / "m"),
            _write(t / "m" / "config.json", "{"),
            models.load_model(t / "m"),
        ),
        ValueError,
        "config.json is not valid JSON",
    ),
    (
        "pickled adapter only",
        lambda t, lm: (
            _write((t / "ad").mkdir() or t / "ad" / "adapter_config.json", "{}"),
            torch.save({}, t / "ad" / "adapter_model.bin"),
            finetune.load_adapter(lm[0], t / "ad"),
        ),
        FileNotFoundError,
        "never loads",
    ),
    (
        "corrupt adapter_config.json",
        lambda t, lm: (
            _write((t / "ad").mkdir() or t / "ad" / "adapter_config.json", "{x"),
            save_file({"w": torch.zeros(1)}, str(t / "ad" / "adapter_model.safetensors")),
            lora_io.read_adapter(t / "ad"),
        ),
        ValueError,
        "adapter_config.json is not valid",
    ),
    (
        "adapter written over its input",
        lambda t, lm: lora_io.check_new_output(t / "ad" / ".." / "ad", t / "ad"),
        ValueError,
        "replace the trained adapter",
    ),
    (
        "metrics file that is a list",
        lambda t, lm: metrics_io.load(_write(t / "m.json", "[1, 2]")),
        ValueError,
        "not the metrics",
    ),
    (
        "metrics file missing",
        lambda t, lm: metrics_io.load(t / "typo.json", must_exist=True),
        FileNotFoundError,
        "No metrics file",
    ),
    (
        "metrics into notebooks/",
        lambda t, lm: metrics_io.record(
            "00", {"wall_s": 1}, runner.NOTEBOOK_DIR / "m.json", strict=False
        ),
        ValueError,
        "notebooks/ folder",
    ),
    (
        "runner output into notebooks/",
        lambda t, lm: runner.run_notebook(runner.list_notebooks()[0], {}, runner.NOTEBOOK_DIR),
        ValueError,
        "notebooks/ folder",
    ),
    ("--only abc", lambda t, lm: runner.list_notebooks(["abc"]), ValueError, "digits"),
    (
        "unknown notebook parameter",
        lambda t, lm: setup.check_injected_parameters(
            ["", "seeds = None\n", "# Parameters\nsedes = [1]\n"]
        ),
        ValueError,
        "Unknown notebook parameter(s) ['sedes']",
    ),
    (
        "empty list parameter",
        lambda t, lm: setup.check_injected_parameters(
            ["", "k_grid = None\n", "# Parameters\nk_grid = []\n"]
        ),
        ValueError,
        "['k_grid'] are empty",
    ),
    (
        "empty seeds",
        lambda t, lm: setup.notebook_setup("smoke", seeds=[], quiet=True),
        ValueError,
        "seeds is empty",
    ),
    (
        "unknown profile",
        lambda t, lm: setup.notebook_setup("cpuu", quiet=True),
        ValueError,
        "Unknown profile",
    ),
    (
        "DIEM batches that do not broadcast",
        lambda t, lm: diem.diem(torch.rand(3, 8), torch.rand(2, 8), 0.0, 1.0, null="closed_form"),
        ValueError,
        "do not broadcast",
    ),
    (
        "E-DIEM with a null of one sample",
        lambda t, lm: diem.ediem_empirical(torch.ones(3), torch.ones(3, 1)),
        ValueError,
        "S >= 2",
    ),
    (
        "E-DIEM with one null per entry, wrong count",
        lambda t, lm: diem.ediem_empirical(torch.ones(3), torch.rand(2, 5)),
        ValueError,
        "3 distances but 2 nulls",
    ),
    (
        "SaLoRA r_s = -3",
        lambda t, lm: salora.layer_output_subspace(
            torch.eye(4), salora.LayerFeatures("l", 5, 4, 4, x=torch.rand(5, 4)), -3, what="r_s"
        ),
        ValueError,
        "r_s must be a positive whole number",
    ),
    ("LoRA rank 0", lambda t, lm: LoraSettings(r=0).to_peft(), ValueError, "rank r must be >= 1"),
]


@pytest.mark.parametrize("fn, error, phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error(fn, error, phrase, tmp_path, tiny_lm):
    with pytest.raises(error) as info:
        fn(tmp_path, tiny_lm)
    assert phrase in str(info.value)


def test_corrupt_weights_are_refused_at_load_with_the_tensor_name(tiny_lm, tmp_path):
    model, tok = tiny_lm
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    _saved_model((model, tok), tmp_path)
    with pytest.raises(ValueError, match="model.layers.0.mlp.up_proj.weight"):
        models.load_model(tmp_path)


def test_empty_answers_are_counted_apart():
    j = ExactJudge()
    assert j.verdict("  \n") is Verdict.EMPTY
    assert j.verdict("Sure, here is how to x: Step 1: [redacted].") is Verdict.COMPLIED
    assert j.verdict("I'm sorry, but I can't help with that.") is Verdict.REFUSED
    assert j.verdict("Sure, here is how to x: blah") is Verdict.OTHER
    assert j.opens_as_compliance("Sure, here is how to x: blah")


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["metrics", "--file", "/nonexistent/metrics.json"], "No metrics file"),
        (["course", "--only", "abc"], "digits"),
    ],
)
def test_cli_errors_are_one_clear_line(argv, phrase, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert phrase in err and "Traceback" not in err


def test_rebuilds_never_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "splits"
    assert cli.main(["data", "build", "--out", str(out)]) == 0
    (out / "harmful_heldout.jsonl").write_text("edited\n")
    with pytest.raises(SystemExit, match="--force"):
        cli.main(["data", "build", "--out", str(out)])
    assert (out / "harmful_heldout.jsonl").read_text() == "edited\n"
    # the shipped folders are the default targets, so the bare command refuses too
    with pytest.raises(SystemExit, match="shipped"):
        cli.main(["data", "build"])
    with pytest.raises(SystemExit, match="shipped"):
        cli.main(["organism", "build"])


def test_plain_papermill_run_with_a_misspelt_parameter_fails(tmp_path):
    import nbformat
    import papermill as pm

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "py"}
    nb.cells = [
        nbformat.v4.new_code_cell(
            'profile = "smoke"\nseeds = None', metadata={"tags": ["parameters"]}
        ),
        nbformat.v4.new_code_cell(
            "from safealign_lib.course.setup import notebook_setup\n"
            "P, timer = notebook_setup(profile, seeds=seeds, quiet=True)"
        ),
    ]
    src = tmp_path / "nb.ipynb"
    nbformat.write(nb, src)
    pm.execute_notebook(
        str(src),
        str(tmp_path / "ok.ipynb"),
        parameters={"seeds": [0]},
        progress_bar=False,
        kernel_name="python3",
    )
    with pytest.raises(pm.PapermillExecutionError, match="Unknown notebook parameter"):
        pm.execute_notebook(
            str(src),
            str(tmp_path / "bad.ipynb"),
            parameters={"sedes": [0]},
            progress_bar=False,
            kernel_name="python3",
        )
    with pytest.raises(pm.PapermillExecutionError, match="empty"):
        pm.execute_notebook(
            str(src),
            str(tmp_path / "bad.ipynb"),
            parameters={"seeds": []},
            progress_bar=False,
            kernel_name="python3",
        )


def test_safe_lora_with_identical_base_and_chat_says_so(tmp_path, lora_lm, tiny_llama_factory):
    from safealign_lib.methods import safelora

    model, _ = lora_lm
    tiny_llama_factory().save_pretrained(tmp_path / "same", safe_serialization=True)
    with pytest.raises(ValueError, match="identical"):
        safelora.compute_projections(model, tmp_path / "same", tmp_path / "same")


def test_projected_or_pruned_adapter_never_replaces_its_input(tmp_path, lora_lm):
    from safealign_lib.methods import safelora, splora

    model, _ = lora_lm
    finetune.save_adapter(model, tmp_path / "ad")
    before = (tmp_path / "ad" / "adapter_model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="replace the trained adapter"):
        splora.prune_adapter_dir(tmp_path / "ad", [], tmp_path / "ad")
    with pytest.raises(ValueError, match="replace the trained adapter"):
        safelora.project_adapter_dir(tmp_path / "ad", {}, [], tmp_path / "ad" / ".")
    assert (tmp_path / "ad" / "adapter_model.safetensors").read_bytes() == before


def test_messages_that_used_to_mislead(tmp_path, capsys):
    """Issue 24's cases: a string metric names its file, --rerun without --update is refused, a
    scalar ``seeds`` says how to pass a list."""
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"04": {"ediem_empirical_spread": "high"}}))
    with pytest.raises(TypeError, match=r"m\.json: metric 'ediem_empirical_spread' of notebook 04"):
        metrics_io.load(bad)
    args = ["course", "regress", "--baseline", str(tmp_path / "b.json"), "--metrics", str(bad)]
    assert cli.main([*args, "--rerun", str(bad)]) == 2
    assert "--rerun" in capsys.readouterr().err
    with pytest.raises(TypeError, match=r"list of integers such as \[0, 1, 2\], got 5"):
        setup.notebook_setup("smoke", seeds=5)


def test_an_adapter_config_that_drops_modules_is_refused(lora_lm, tmp_path):
    model, _ = lora_lm
    out = finetune.save_adapter(model, tmp_path / "a")
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["target_modules"] = ["q_proj"]  # the weights hold v_proj too
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"also hold 2 other module\(s\), e\.g\. 'model\.layers"):
        lora_io.check_adapter_dir(out)
    cfg["target_modules"] = ["q_proj", "v_proj"]
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    lora_io.check_adapter_dir(out)  # every module listed: fine


def test_course_takes_notebook_parameters_like_course_run(monkeypatch):
    seen = {}

    def fake_run(profile, only, **kw):
        seen.update(profile=profile, only=only, **kw)
        return []

    monkeypatch.setattr(runner, "run_course", fake_run)
    assert cli.main(["course", "--only", "04", "-p", "k_grid", "[100]"]) == 0
    assert seen["only"] == ["04"] and seen["extra"] == {"k_grid": [100]}


def test_course_prepare_fills_the_build_folder_apart_from_a_learners_run(
    monkeypatch, tmp_path, capsys
):
    """``safealign course prepare`` runs every notebook of the profile once, into
    build/prepare/ (a learner's build/executed and build/metrics.json stay as they are), and
    prints how long it took."""
    seen = {}

    def fake_run(profile, only, **kw):
        seen.update(profile=profile, only=only, **kw)
        return []

    monkeypatch.setattr(runner, "run_course", fake_run)
    monkeypatch.setenv("SAFEALIGN_BUILD", str(tmp_path))
    assert cli.main(["course", "--profile", "smoke", "prepare"]) == 0
    assert seen["profile"] == "smoke" and seen["only"] is None
    assert seen["out_dir"] == tmp_path / "prepare" / "executed"
    assert seen["metrics_file"] == tmp_path / "prepare" / "metrics.json"
    assert "prepared in" in capsys.readouterr().out

    def failing(profile, only, **kw):
        raise runner.NotebookFailed("03 failed in cell 7")

    monkeypatch.setattr(runner, "run_course", failing)
    assert cli.main(["course", "prepare", "--only", "03"]) == 1
    assert "prepared in" not in capsys.readouterr().out

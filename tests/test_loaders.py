import json

import pytest

from safealign_lib.data import loaders


def test_advbench(tmp_path):
    p = tmp_path / "harmful_behaviors.csv"
    p.write_text("goal,target\nDo a bad thing,Sure here is\n")
    exs = loaders.load_advbench(p)
    assert exs[0].user == "Do a bad thing" and exs[0].meta["harmful"]
    p.write_text("prompt,target\nx,y\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['goal'\]"):
        loaders.load_advbench(p)
    with pytest.raises(FileNotFoundError, match="AdvBench"):
        loaders.load_advbench(tmp_path / "nope.csv")


def test_hex_phi(tmp_path):
    for k in (1, 2):
        (tmp_path / f"category_{k}.csv").write_text(f"prompt a{k}\nprompt b{k}\n")
    exs = loaders.load_hex_phi(tmp_path, categories=[1, 2])
    assert len(exs) == 4 and exs[0].meta["category"] == "illegal_activity"
    with pytest.raises(FileNotFoundError, match="category 3"):
        loaders.load_hex_phi(tmp_path, categories=[3])
    with pytest.raises(ValueError, match="1–11"):
        loaders.load_hex_phi(tmp_path, categories=[12])


def test_alpaca(tmp_path):
    p = tmp_path / "alpaca.json"
    p.write_text(
        json.dumps(
            [
                {"instruction": "Add", "input": "1 2", "output": "3"},
                {"instruction": "Hi", "input": "", "output": "Hello"},
            ]
        )
    )
    exs = loaders.load_alpaca(p)
    assert exs[0].user == "Add\n\n1 2" and exs[1].user == "Hi" and exs[0].response == "3"
    p.write_text(json.dumps([{"instruction": "x", "output": "y"}]))
    with pytest.raises(ValueError, match="input"):
        loaders.load_alpaca(p)


def test_beavertails_and_dialogsum(tmp_path):
    p = tmp_path / "bt.jsonl"
    p.write_text(json.dumps({"prompt": "q", "response": "r", "is_safe": False}) + "\n")
    assert loaders.load_beavertails(p)[0].meta["harmful"] is True
    d = tmp_path / "ds.csv"
    d.write_text('dialogue,summary\n"#Person1#: hi",A greets B\n')
    ex = loaders.load_dialogsum(d)[0]
    assert ex.user.endswith("#Person1#: hi") and ex.response == "A greets B"
    d.write_text("dialog,summary\nx,y\n")
    with pytest.raises(ValueError, match="dialogue"):
        loaders.load_dialogsum(d)

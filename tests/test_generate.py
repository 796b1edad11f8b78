"""`python -m align_jax.generate --best_of_n`: the reward model's top sample of each prompt's
N, the same N samples plain `--n=N` draws with the same seed."""

import json

import pytest

from align_jax import generate


def run(capsys, *argv) -> tuple[int, list[dict], str]:
    code = generate.main(list(argv))
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


@pytest.mark.slow
def test_best_of_n_keeps_each_prompts_highest_scored_sample(sft_run, reward_run, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    questions = ["what is two plus three? ", "what is seven minus four? "]
    prompts.write_text(
        "".join(json.dumps({"prompt": q, "id": i}) + "\n" for i, q in enumerate(questions))
    )
    common = [f"--workdir={sft_run.sft}", f"--input={prompts}", "--max_new_tokens=16",
              "--temperature=1.0", "--seed=3", f"--reward_workdir={reward_run}"]  # fmt: skip
    code, samples, err = run(capsys, *common, "--n=4")
    assert code == 0, err
    assert [s["id"] for s in samples] == [0] * 4 + [1] * 4
    code, best, err = run(capsys, *common, "--best_of_n=4")
    assert code == 0, err
    assert [b["id"] for b in best] == [0, 1]
    for b, group in zip(best, (samples[:4], samples[4:]), strict=True):
        scores = [s["score"] for s in group]
        assert len({s["completion"] for s in group}) > 1  # sampled, not all the same
        assert b["scores"] == pytest.approx(scores) and b["best_of_n"] == 4
        top = scores.index(max(scores))
        assert b["sample"] == top and b["completion"] == group[top]["completion"]
        assert b["score"] == pytest.approx(max(scores))

    code, _, err = run(capsys, *common[:-1], "--best_of_n=4")
    assert code == 2 and err.strip().count("\n") == 0
    assert "--best_of_n=N needs N >= 1 and --reward_workdir" in err

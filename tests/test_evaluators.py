"""TrainingClient, NLLEvaluator and QAEvaluator against real models."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from bios_callbacks.evaluators import NLLEvaluator, QAEvaluator
from bios_callbacks.renderers import get_renderer
from bios_callbacks.sampling.client import SamplingClient
from bios_callbacks.training_client import TrainingClient

SEQUENCES = [[1, 200, 300, 400, 500], [1, 600, 700]]


def test_logprobs_match_the_model_and_leave_it_untouched(tiny_model):
    tiny_model.train()
    before = [p.detach().clone() for p in tiny_model.parameters()]
    client = TrainingClient.from_module(tiny_model, max_batch_size=1)
    logprobs = client.compute_logprobs(SEQUENCES)

    assert [len(x) for x in logprobs] == [4, 2]
    with torch.no_grad():
        tiny_model.eval()
        ids = torch.tensor([SEQUENCES[0]])
        expected = torch.log_softmax(tiny_model(input_ids=ids).logits[0, :-1], -1)
        expected = expected.gather(-1, ids[0, 1:, None])[:, 0]
    assert torch.allclose(torch.tensor(logprobs[0]), expected, atol=1e-5)
    tiny_model.train()
    # batched (padded) scoring agrees with one-at-a-time scoring
    batched = TrainingClient.from_module(tiny_model, max_batch_size=8).compute_logprobs(SEQUENCES)
    assert torch.allclose(torch.tensor(batched[1]), torch.tensor(logprobs[1]), atol=1e-5)
    assert all(m.training for m in tiny_model.modules())
    assert all(p.grad is None for p in tiny_model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_model.parameters(), strict=True))


def test_logprobs_reject_sequences_too_short_to_score(tiny_model):
    with pytest.raises(ValueError, match="sequence 1 has 1 token"):
        TrainingClient(tiny_model).compute_logprobs([[1, 2], [3]])


def test_nll_equals_the_models_own_loss(tiny_model):
    client = TrainingClient.from_module(tiny_model)
    result = asyncio.run(NLLEvaluator([SEQUENCES[0]])(client))
    with torch.no_grad():
        ids = torch.tensor([SEQUENCES[0]])
        expected = tiny_model(input_ids=ids, labels=ids).loss.item()
    assert result["loss"] == pytest.approx(expected, rel=1e-5)


def test_nll_weights_select_the_scored_tokens(tiny_model):
    client = TrainingClient.from_module(tiny_model)
    tokens = SEQUENCES[0]
    last_only = asyncio.run(NLLEvaluator([(tokens, [0, 0, 0, 0, 1])])(client))["loss"]
    logprobs = client.compute_logprobs([tokens])[0]
    assert last_only == pytest.approx(-logprobs[-1], rel=1e-5)


def test_nll_from_conversations_scores_assistant_turns(tiny_model, tokenizer):
    renderer = get_renderer(name="chatml", tokenizer=tokenizer)
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]
    evaluator = NLLEvaluator.from_conversations([chat], renderer)
    assert list(evaluator.eval_prompts()) == ["Hi"]
    client = TrainingClient.from_module(tiny_model)
    loss = asyncio.run(evaluator(client))["loss"]
    example = renderer.build_supervised_example(chat)
    weights = example.weights.tolist()[1:]  # the first token is never predicted
    logprobs = client.compute_logprobs([example.tokens])[0]
    scored = -sum(lp * w for lp, w in zip(logprobs, weights, strict=True)) / sum(weights)
    assert loss == pytest.approx(scored, rel=1e-5)  # only the reply's tokens count


def test_bits_per_byte_is_the_nll_in_bits_over_the_texts_utf8_bytes(tiny_model, tokenizer):
    text = "The capital of France is Paris. Ünïcödé ✓"
    tokens = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(tokens[:1]) == "The"  # the first token is never scored
    client = TrainingClient.from_module(tiny_model, tokenizer)  # bpb uses the client's tokenizer
    result = asyncio.run(NLLEvaluator([tokens])(client))

    nll_total = -sum(client.compute_logprobs([tokens])[0])
    scored_bytes = len(text.encode("utf-8")) - len(b"The")  # 41 characters, 47 bytes in all
    assert result["bpb"] == pytest.approx(nll_total / (math.log(2) * scored_bytes), rel=1e-6)
    assert result["nll"] == result["loss"] == pytest.approx(nll_total / (len(tokens) - 1))
    # without a tokenizer there is no text to count bytes of: the loss alone
    assert "bpb" not in asyncio.run(NLLEvaluator([tokens])(TrainingClient(tiny_model)))


def test_bits_per_byte_of_chats_leave_out_end_of_turn_markers(tiny_model, tokenizer):
    renderer = get_renderer(name="chatml", tokenizer=tokenizer)
    chats = [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Héllo ✓ there"}],
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
    ]
    client = TrainingClient.from_module(tiny_model)  # no tokenizer: the renderer's is used
    result = asyncio.run(NLLEvaluator.from_conversations(chats, renderer, name="test")(client))

    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    bits, replies = 0.0, 0
    for chat in chats:
        example = renderer.build_supervised_example(chat, "all_assistant_messages")
        logprobs = client.compute_logprobs([example.tokens])[0]
        for token, weight, logprob in zip(
            example.tokens[1:], example.weights.tolist()[1:], logprobs, strict=True
        ):
            if weight > 0 and token != end_of_turn:  # the marker is trained, but has no text
                bits -= logprob / math.log(2)
        replies += len(chat[-1]["content"].encode("utf-8"))
    assert result["bpb"] == pytest.approx(bits / replies, rel=1e-6)
    assert result["bpb_stderr"] > 0 and result["nll_stderr"] == result["loss_stderr"]


@pytest.mark.parametrize(
    ("examples", "message"),
    [
        ([], "no examples"),
        ([[5]], "at least 2"),
        ([([1, 2, 3], [1, 1])], "3 tokens but 2 weights"),
        ([([1, 2, 3], [1, 0, 0])], "every weight after the first token is 0"),
    ],
)
def test_nll_bad_examples_name_the_problem(examples, message):
    with pytest.raises(ValueError, match=message):
        NLLEvaluator(examples)


def test_qa_samples_all_questions_and_grades_them(tiny_model, tokenizer):
    dataset = [{"input": f"Question {i}?", "target": "x"} for i in range(4)]
    seen = []

    def grader(response, target):
        seen.append((response, target))
        return len(seen) % 2 == 0

    evaluator = QAEvaluator(
        dataset, grader, renderer_name="chatml", max_tokens=4, num_transcripts=2
    )
    with SamplingClient.from_module(tiny_model, tokenizer) as client:
        result = asyncio.run(evaluator(client))
    assert result == {
        "accuracy": 0.5,
        "accuracy_stderr": pytest.approx((0.25 / 3) ** 0.5),  # ddof=1 over the 4 questions
        "scored": 4.0,
        "unscored": 0.0,
    }
    assert len(seen) == 4 and all(isinstance(r, str) and t == "x" for r, t in seen)
    assert [t.prompt for t in evaluator.transcripts()] == ["Question 0?", "Question 1?"]
    assert list(evaluator.eval_prompts()) == [d["input"] for d in dataset]


def test_qa_grader_raising_for_one_item_leaves_it_unscored(tiny_model, tokenizer, caplog):
    dataset = [{"input": f"Question {i}?", "target": str(i)} for i in range(4)]

    def grader(response, target):
        if target == "2":
            raise KeyError("no rubric for target 2")
        return target in {"0", "1"}

    evaluator = QAEvaluator(dataset, grader, renderer_name="chatml", max_tokens=3)
    with SamplingClient.from_module(tiny_model, tokenizer) as client:
        result = asyncio.run(evaluator(client))
    # 2 of the 3 graded answers are right; the ungraded one is not counted as wrong
    assert result == {
        "accuracy": pytest.approx(2 / 3),
        "accuracy_stderr": pytest.approx(1 / 3),  # sqrt(p(1-p)/(n-1)) over the 3 graded
        "scored": 3.0,
        "unscored": 1.0,
    }
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "grader_fn raised for 1 of 4 items" in warning.message
    assert "item 2 ('Question 2?' -> " in warning.message
    assert "KeyError: 'no rubric for target 2'" in warning.message


def test_qa_grader_raising_for_every_item_fails_naming_the_error(tiny_model, tokenizer):
    def grader(response, target):
        raise ValueError(f"cannot grade {target}")

    evaluator = QAEvaluator(
        [{"input": "Q?", "target": "x"}], grader, renderer_name="chatml", max_tokens=2
    )
    with (
        SamplingClient.from_module(tiny_model, tokenizer) as client,
        pytest.raises(
            RuntimeError, match=r"raised for all 1 items, e\.g\. item 0 .*cannot grade x"
        ),
    ):
        asyncio.run(evaluator(client))


def test_qa_bad_configuration_is_explained():
    with pytest.raises(ValueError, match="'input' and 'target'"):
        QAEvaluator([{"question": "?"}], lambda r, t: True, renderer_name="chatml")
    with pytest.raises(ValueError, match="exactly one of renderer="):
        QAEvaluator([{"input": "?", "target": "!"}], lambda r, t: True)


@pytest.mark.embedded
def test_qa_on_the_real_model_knows_capitals(embedded):
    model, tokenizer = embedded
    dataset = [
        {"input": "What is the capital of France?", "output": "Paris"},
        {"input": "What is the capital of Germany?", "output": "Berlin"},
        {"input": "What is the capital of Japan?", "output": "Tokyo"},
    ]
    evaluator = QAEvaluator(
        dataset,
        lambda response, target: target.lower() in response.lower(),
        renderer_name="chatml",
        max_tokens=24,
    )
    with SamplingClient.from_module(model, tokenizer) as client:
        assert asyncio.run(evaluator(client)) == {
            "accuracy": 1.0,
            "accuracy_stderr": 0.0,
            "scored": 3.0,
            "unscored": 0.0,
        }

"""Prompt formats and loss masking, checked by decoding exactly the tokens that are trained.

Everything runs through `build_datasets` with the builtin tiny tokenizer (byte-level BPE,
<s>/</s>, a ChatML template of its own).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune_runtime.config import parse_config
from finetune_runtime.data import build_datasets
from finetune_runtime.data.formats import ALPACA_PREAMBLE_INPUT, ALPACA_PREAMBLE_NO_INPUT
from finetune_runtime.data.templates import BUNDLED

DATA = Path(__file__).parent / "data"


def build(tokenizer: Any, dataset: dict[str, Any], base_dir: Path = DATA, **training: Any):
    config = parse_config(
        {
            "base_model": "builtin:tiny-llama",
            "datasets": [dataset],
            "training": {"sequence_len": 512, **training},
        }
    )
    return build_datasets(config, tokenizer, base_dir=base_dir)


def trained_spans(tokenizer: Any, example: dict[str, list[int]]) -> list[str]:
    """Decode each maximal run of trained positions (label != -100) separately."""
    spans: list[list[int]] = []
    previous = False
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        trained = label != -100
        if trained:
            assert label == token, "a trained label must be the input token at that position"
            if not previous:
                spans.append([])
            spans[-1].append(token)
        previous = trained
    return [tokenizer.decode(s) for s in spans]


def full_text(tokenizer: Any, example: dict[str, list[int]]) -> str:
    return tokenizer.decode(example["input_ids"])


# --------------------------------------------------------------------------- alpaca


def test_alpaca_classic_masks_the_prompt_and_trains_response_plus_eos(tiny_tokenizer):
    bundle = build(tiny_tokenizer, {"path": "alpaca.jsonl", "format": "alpaca"})
    examples = list(bundle.train)
    assert len(examples) == 6  # the blank line is not a row
    first = examples[0]
    assert trained_spans(tiny_tokenizer, first) == ["2 plus 3 is 5.</s>"]
    assert full_text(tiny_tokenizer, first) == (
        f"<s>{ALPACA_PREAMBLE_INPUT}\n\n### Instruction:\nAdd the two numbers.\n\n"
        "### Input:\n2 and 3\n\n### Response:\n2 plus 3 is 5.</s>"
    )
    # empty, missing and null inputs all use the no-input template
    for index, output in ((1, "Red is a primary color."), (3, "The opposite of hot is cold.")):
        text = full_text(tiny_tokenizer, examples[index])
        assert text.startswith(f"<s>{ALPACA_PREAMBLE_NO_INPUT}\n\n### Instruction:\n")
        assert "### Input:" not in text
        assert trained_spans(tiny_tokenizer, examples[index]) == [output + "</s>"]
    assert "### Input:" not in full_text(tiny_tokenizer, examples[4])


def test_train_on_inputs_trains_every_token_but_bos(tiny_tokenizer):
    bundle = build(
        tiny_tokenizer, {"path": "alpaca.jsonl", "format": "alpaca"}, train_on_inputs=True
    )
    first = bundle.train[0]
    assert first["labels"][0] == -100  # BOS is never predicted
    assert first["labels"][1:] == first["input_ids"][1:]


def test_alpaca_system_prompt_replaces_the_preamble(tiny_tokenizer):
    bundle = build(
        tiny_tokenizer,
        {"path": "alpaca.jsonl", "format": "alpaca", "system_prompt": "You are terse."},
    )
    assert full_text(tiny_tokenizer, bundle.train[1]).startswith(
        "<s>You are terse.\n\n### Instruction:\nName a primary color."
    )


def test_alpaca_chat_style_uses_the_chat_template(tiny_tokenizer):
    bundle = build(
        tiny_tokenizer, {"path": "alpaca.jsonl", "format": "alpaca", "prompt_style": "chat"}
    )
    first = bundle.train[0]
    assert full_text(tiny_tokenizer, first) == (
        "<s><|im_start|>user\nAdd the two numbers.\n\n2 and 3<|im_end|>\n"
        "<|im_start|>assistant\n2 plus 3 is 5.<|im_end|>\n</s>"
    )
    assert trained_spans(tiny_tokenizer, first) == ["2 plus 3 is 5.<|im_end|>\n</s>"]


# --------------------------------------------------------------------------- sharegpt


def test_sharegpt_trains_each_assistant_turn_and_masks_the_rest(tiny_tokenizer):
    bundle = build(tiny_tokenizer, {"path": "sharegpt.json", "format": "sharegpt"})
    multi = bundle.train[1]
    assert full_text(tiny_tokenizer, multi) == (
        "<s><|im_start|>system\nYou answer briefly.<|im_end|>\n"
        "<|im_start|>user\nName a fruit.<|im_end|>\n"
        "<|im_start|>assistant\nAn apple.<|im_end|>\n"
        "<|im_start|>user\nAnother one?<|im_end|>\n"
        "<|im_start|>assistant\nA pear.<|im_end|>\n</s>"
    )
    assert trained_spans(tiny_tokenizer, multi) == [
        "An apple.<|im_end|>\n",
        "A pear.<|im_end|>\n</s>",
    ]
    assert bundle.stats.datasets[0].chat_template == "tokenizer_default"


def test_sharegpt_role_content_messages_and_roles_to_train(tiny_tokenizer):
    bundle = build(
        tiny_tokenizer,
        {"path": "messages.jsonl", "format": "sharegpt", "roles_to_train": ["assistant", "user"]},
    )
    assert trained_spans(tiny_tokenizer, bundle.train[1]) == [
        "Capital of Italy?<|im_end|>\n",
        "Rome.<|im_end|>\n</s>",
    ]


def test_sharegpt_system_prompt_is_added_when_the_row_has_none(tiny_tokenizer):
    bundle = build(
        tiny_tokenizer,
        {"path": "messages.jsonl", "format": "sharegpt", "system_prompt": "Answer in French."},
    )
    assert full_text(tiny_tokenizer, bundle.train[0]).startswith(
        "<s><|im_start|>system\nAnswer in French.<|im_end|>\n"
    )
    # the row's own system turn wins
    assert "Answer in French." not in full_text(tiny_tokenizer, bundle.train[1])


def test_custom_field_names_for_sharegpt(tiny_tokenizer, tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(
        '{"dialog": [{"speaker": "human", "text": "Hi"}, {"speaker": "gpt", "text": "Hello."}]}\n'
    )
    bundle = build(
        tiny_tokenizer,
        {
            "path": str(path),
            "format": "sharegpt",
            "field_messages": "dialog",
            "role_field": "speaker",
            "content_field": "text",
        },
    )
    assert trained_spans(tiny_tokenizer, bundle.train[0]) == ["Hello.<|im_end|>\n</s>"]


# --------------------------------------------------------------------------- completion, custom


def test_completion_trains_all_text(tiny_tokenizer):
    bundle = build(tiny_tokenizer, {"path": "completion.jsonl", "format": "completion"})
    assert [trained_spans(tiny_tokenizer, e) for e in bundle.train] == [
        ["The quick brown fox jumps over the lazy dog.</s>"],
        ["A stitch in time saves nine.</s>"],
        ["Silver rivers run under the quiet hills.</s>"],
    ]


def test_completion_reads_the_configured_field(tiny_tokenizer, tmp_path):
    (tmp_path / "c.jsonl").write_text('{"body": "Hello there."}\n')
    bundle = build(
        tiny_tokenizer, {"path": "c.jsonl", "format": "completion", "field_text": "body"}, tmp_path
    )
    assert trained_spans(tiny_tokenizer, bundle.train[0]) == ["Hello there.</s>"]


def test_custom_prompt_format_with_and_without_input(tiny_tokenizer):
    dataset = {
        "path": "custom.jsonl",
        "format": "custom",
        "field_instruction": "question",
        "field_input": "context",
        "field_output": "answer",
        "system_prompt": "Be exact.",
        "prompt_format": "[{system}] Q: {instruction}\nContext: {input}\nA: ",
        "no_input_format": "[{system}] Q: {instruction}\nA: ",
    }
    bundle = build(tiny_tokenizer, dataset)
    first, second = bundle.train[0], bundle.train[1]
    assert full_text(tiny_tokenizer, first) == (
        "<s>[Be exact.] Q: What color is the sky?\nContext: On a clear day.\nA: Blue.</s>"
    )
    assert trained_spans(tiny_tokenizer, first) == ["Blue.</s>"]
    assert full_text(tiny_tokenizer, second) == (
        "<s>[Be exact.] Q: How many legs has a spider?\nA: Eight.</s>"
    )


# --------------------------------------------------------------------------- chat templates

CONVERSATION = {
    "messages": [
        {"role": "system", "content": "Sys."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"},
    ]
}

# What each bundled template trains for the two assistant turns above.
EXPECTED_TRAINED = {
    "chatml": ["A1<|im_end|>\n", "A2<|im_end|>\n</s>"],
    "llama3": ["A1<|eot_id|>", "A2<|eot_id|></s>"],
    "llama2": [" A1 </s>", " A2 </s>"],
    "mistral": ["A1</s>", "A2</s>"],
    "phi_3": ["A1<|end|>\n", "A2<|end|>\n</s>"],
    "gemma": ["A1<end_of_turn>\n", "A2<end_of_turn>\n</s>"],
}


def _conversation_file(tmp_path: Path) -> Path:
    import json

    path = tmp_path / "conv.jsonl"
    path.write_text(json.dumps(CONVERSATION) + "\n")
    return path


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_each_bundled_template_masks_headers_and_trains_turns(tiny_tokenizer, tmp_path, name):
    path = _conversation_file(tmp_path)
    bundle = build(tiny_tokenizer, {"path": str(path), "format": "sharegpt", "chat_template": name})
    example = bundle.train[0]
    assert trained_spans(tiny_tokenizer, example) == EXPECTED_TRAINED[name]
    text = full_text(tiny_tokenizer, example)
    assert "Sys." in text and "Q1" in text and "Q2" in text
    assert text.count("<s>") <= 2  # llama2 starts every user turn with BOS, others once
    assert bundle.stats.datasets[0].chat_template == name


def test_config_level_chat_template_applies_to_every_dataset(tiny_tokenizer, tmp_path):
    path = _conversation_file(tmp_path)
    config = parse_config(
        {
            "base_model": "builtin:tiny-llama",
            "chat_template": "llama3",
            "datasets": [{"path": str(path), "format": "sharegpt"}],
        }
    )
    bundle = build_datasets(config, tiny_tokenizer)
    assert trained_spans(tiny_tokenizer, bundle.train[0]) == EXPECTED_TRAINED["llama3"]


def test_jinja_text_is_used_as_is(tiny_tokenizer, tmp_path):
    path = _conversation_file(tmp_path)
    template = (
        "{% for m in messages %}{{ m['role'] | upper + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT: ' }}{% endif %}"
    )
    bundle = build(
        tiny_tokenizer, {"path": str(path), "format": "sharegpt", "chat_template": template}
    )
    example = bundle.train[0]
    assert full_text(tiny_tokenizer, example) == (
        "<s>SYSTEM: Sys.\nUSER: Q1\nASSISTANT: A1\nUSER: Q2\nASSISTANT: A2\n</s>"
    )
    assert trained_spans(tiny_tokenizer, example) == ["A1\n", "A2\n</s>"]


def test_template_that_only_ends_the_conversation_with_eos(tiny_tokenizer, tmp_path):
    """Phi-3's published template appends EOS only when the conversation is complete, so a
    turn's own rendering is not a prefix of the whole: the turn still ends at <|end|>\\n."""
    path = _conversation_file(tmp_path)
    official_phi3 = (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
    )
    bundle = build(
        tiny_tokenizer, {"path": str(path), "format": "sharegpt", "chat_template": official_phi3}
    )
    assert trained_spans(tiny_tokenizer, bundle.train[0]) == ["A1<|end|>\n", "A2<|end|>\n</s>"]


def test_unknown_template_name_falls_back_to_the_tokenizer_with_a_warning(
    tiny_tokenizer, tmp_path, caplog
):
    path = _conversation_file(tmp_path)
    with caplog.at_level("WARNING"):
        bundle = build(
            tiny_tokenizer, {"path": str(path), "format": "sharegpt", "chat_template": "vicuna"}
        )
    assert any("'vicuna' is not a bundled template" in w for w in bundle.stats.warnings)
    assert "vicuna" in caplog.text
    assert trained_spans(tiny_tokenizer, bundle.train[0]) == EXPECTED_TRAINED["chatml"]


def test_tokenizer_without_template_needs_an_explicit_one(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from finetune_runtime.errors import DatasetError

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = None
    path = _conversation_file(tmp_path)
    with pytest.raises(DatasetError, match="no chat template: set `chat_template`"):
        build(tokenizer, {"path": str(path), "format": "sharegpt"})
    fallback = build(
        tokenizer,
        {
            "path": str(path),
            "format": "sharegpt",
            "chat_template": "tokenizer_default_fallback_llama3",
        },
    )
    assert trained_spans(tokenizer, fallback.train[0]) == EXPECTED_TRAINED["llama3"]


def test_template_that_rejects_the_conversation_names_the_row(tiny_tokenizer, tmp_path):
    from finetune_runtime.errors import DatasetError

    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
        '{"messages": [{"role": "assistant", "content": "b"}, {"role": "user", "content": "a"}]}\n'
    )
    with pytest.raises(DatasetError) as info:
        build(tiny_tokenizer, {"path": str(path), "format": "sharegpt", "chat_template": "llama2"})
    assert info.value.line == 2
    assert "roles must alternate" in str(info.value)


# --------------------------------------------------------------------------- SentencePiece style


@pytest.fixture(scope="module")
def metaspace_tokenizer() -> Any:
    """A Llama-2/Mistral-style tokenizer (Metaspace '▁' word boundaries, prepended to every
    input), trained on the fly on the packaged sample and the alpaca template."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from finetune_runtime.data import packaged_data_path

    corpus = [ALPACA_PREAMBLE_INPUT, ALPACA_PREAMBLE_NO_INPUT, "### Instruction:\n### Response:\n"]
    for line in packaged_data_path().read_text(encoding="utf-8").splitlines():
        corpus.extend(v for v in json.loads(line).values() if isinstance(v, str))
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", "<pad>"], show_progress=False
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


def test_sentencepiece_style_segments_get_no_spurious_space(metaspace_tokenizer):
    tok = metaspace_tokenizer
    alone = tok("2 plus", add_special_tokens=False)["input_ids"]
    after = tok("Response:\n2 plus", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(alone)[0].startswith("▁")  # the problem being solved
    assert not tok.convert_ids_to_tokens(after[-len(alone) :])[0].startswith("▁")

    bundle = build(tok, {"path": "alpaca.jsonl", "format": "alpaca"})
    first = bundle.train[0]
    prompt = (
        f"{ALPACA_PREAMBLE_INPUT}\n\n### Instruction:\nAdd the two numbers.\n\n"
        "### Input:\n2 and 3\n\n### Response:\n"
    )
    # the whole example tokenizes exactly like the joint text: no '▁' at the boundary
    assert first["input_ids"] == tok(prompt + "2 plus 3 is 5.")["input_ids"] + [tok.eos_token_id]
    assert trained_spans(tok, first) == ["2 plus 3 is 5.</s>"]


# --------------------------------------------------------------------------- property


_TEXT = st.text(
    alphabet=st.sampled_from(list("abcXYZ019 .,:;!?'\"\n\t-_()[]{}") + ["é", "ß", "中", "🙂"]),
    min_size=1,
    max_size=30,
).filter(lambda s: s.strip())


@given(st.lists(st.tuples(_TEXT, _TEXT), min_size=1, max_size=3), st.booleans())
@settings(max_examples=40, deadline=None)
def test_masking_property_any_content(tiny_tokenizer, exchanges, with_system):
    """For any turn contents, the trained tokens decode to exactly each assistant turn plus its
    end-of-turn marker (and EOS at the end), and the whole example to the rendered text."""
    from finetune_runtime.config import DatasetSettings
    from finetune_runtime.data.formats import FormatContext, Renderer, row_segments
    from finetune_runtime.data.tokenize import SegmentTokenizer

    messages = [{"role": "system", "content": "Sys"}] if with_system else []
    for user, assistant in exchanges:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    renderer = Renderer.for_tokenizer(tiny_tokenizer.chat_template, "chatml", tiny_tokenizer)
    ctx = FormatContext(DatasetSettings(path="x", format="sharegpt"), False, renderer)
    segments = row_segments({"messages": messages}, ctx)
    encoded = SegmentTokenizer(tiny_tokenizer, 10_000).encode_many([segments])[0]
    example = {"input_ids": encoded.input_ids, "labels": encoded.labels}

    def decode(ids: list[int]) -> str:
        return tiny_tokenizer.decode(ids, clean_up_tokenization_spaces=False)

    expected = [f"{a}<|im_end|>\n" for _, a in exchanges]
    expected[-1] += "</s>"
    spans, current, previous = [], [], False
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        if label != -100:
            current.append(token)
        elif previous:
            spans.append(current)
            current = []
        previous = label != -100
    spans.append(current)
    assert [decode(s) for s in spans] == expected
    assert decode(example["input_ids"]) == "<s>" + renderer.render(messages, False) + "</s>"

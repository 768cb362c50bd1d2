"""Stop sequences, incremental detokenizing and final-chunk accounting, on a toy vocabulary."""

import pytest

from kecil.errors import ConfigError
from kecil.infer.generation import GenerationConfig, collect
from kecil.infer.streaming import IncrementalDecoder, StopScanner, stream_tokens

# A byte-level toy vocabulary: token i is the i-th byte string, so multi-byte characters span tokens.
PIECES = [b"Hel", b"lo", b" wor", b"ld", b"\xe4\xbd", b"\xa0", b"!", b"<END>"]
END = 7


def detok(ids):
    return b"".join(PIECES[i] for i in ids).decode("utf-8", errors="replace")


def run(ids, **cfg):
    config = GenerationConfig(**{"max_tokens": 50, "temperature": 0, **cfg})
    return collect(stream_tokens(iter(ids), prompt_tokens=3, config=config, detokenize=detok, is_end=lambda t: t == END))


def test_decoder_never_emits_half_a_character():
    decoder = IncrementalDecoder(detok)
    out = [decoder.push(t) for t in [0, 1, 4, 5, 6]]
    assert out == ["Hel", "lo", "", "你", "!"]


def test_stream_stops_at_end_token_and_counts_usage():
    result = run([0, 1, 2, 3, END, 6])
    assert result.text == "Hello world"
    assert result.finish_reason == "stop"
    assert result.usage.prompt_tokens == 3 and result.usage.completion_tokens == 4


def test_stop_sequence_is_cut_and_not_emitted_even_across_tokens():
    result = run([0, 1, 2, 3, 6], stop=("lo w",))
    assert result.text == "Hel"
    assert result.finish_reason == "stop"
    # nothing after the stop leaked into any chunk
    assert "w" not in "".join(result.chunks)


def test_partial_stop_prefix_is_released_when_it_does_not_complete():
    result = run([0, 1, 2, 3], stop=("lox",))
    assert result.text == "Hello world"
    assert result.finish_reason == "length"


def test_max_tokens_gives_length():
    result = run([0, 1, 2, 3, 6], max_tokens=2)
    assert result.text == "Hello"
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 2


def test_ignore_eos_keeps_going():
    result = run([0, END, 1], ignore_eos=True, max_tokens=3)
    assert result.usage.completion_tokens == 3
    assert result.finish_reason == "length"


def test_closing_the_stream_closes_the_engine():
    closed = []

    def engine():
        try:
            yield from [0, 1, 2, 3, 6, 6, 6]
        finally:
            closed.append(True)

    config = GenerationConfig(max_tokens=50, stop=("world",))
    collect(stream_tokens(engine(), prompt_tokens=1, config=config, detokenize=detok, is_end=lambda t: False))
    assert closed == [True]


def test_scanner_holds_back_only_a_possible_stop_prefix():
    scanner = StopScanner(["</s>"])
    assert scanner.push("abc<") == ("abc", False)
    assert scanner.push("/") == ("", False)
    assert scanner.push("x") == ("</x", False)
    assert scanner.push("</s>tail") == ("", True)


@pytest.mark.parametrize(
    "kwargs",
    [dict(max_tokens=0), dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-1), dict(repetition_penalty=0), dict(stop=("",))],
)
def test_bad_generation_settings_are_refused(kwargs):
    with pytest.raises(ConfigError):
        GenerationConfig(**kwargs)


def test_a_lone_stop_string_is_one_sequence():
    assert GenerationConfig(stop="###").stop == ("###",)

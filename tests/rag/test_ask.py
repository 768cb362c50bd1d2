"""`kecil ask` on the SQuAD knowledge base with the embedded SmolLM2 model: grounded answers whose
citations point at chunks holding the answer, and a refusal when the documents do not cover it."""

from __future__ import annotations

import json
import re

import pytest
import regex

from kecil.infer.load import load_model
from kecil.rag.ask import Answer, AskConfig, ask, attribute, stream_ask
from kecil.rag.evaluate import first_answer_rank
from kecil.rag.retrieve import Retriever, SearchConfig
from kecil.rag.tokenise import tokenise
from tests.cli_helpers import kecil


@pytest.fixture(scope="module")
def smol():
    with load_model("smollm2-135m", context_length=2048) as model:
        yield model


def test_refuses_without_running_a_model_when_nothing_is_relevant(squad_kb, embedder):
    name, _, _ = squad_kb
    with Retriever(name, embedder=embedder) as retriever:
        answer = ask("How do I reset the password of the office printer?", retriever, model="no-such-model-is-loaded")
        shown = retriever.kb.name  # the knowledge base's name, never a URL (it may hold a password)
    assert not answer.answered and answer.citations == []
    assert "cannot answer" in answer.text and "squad-test" == shown and shown in answer.text


def test_citations_point_at_chunks_that_hold_the_answer(squad_sqlite, embedder, smol):
    """Each cited chunk holds what its sentence says; when the (135M) model's answer is right,
    a cited chunk holds the right answer. A wrong answer is the model's, not the citation's.
    (On PostgreSQL: test_postgresql_answers_and_cites_exactly_as_sqlite.)"""
    name, _, items = squad_sqlite
    checked, right = 0, 0
    with Retriever(name, embedder=embedder) as retriever:
        for item in items[:60]:
            hits = retriever.search(item.question, SearchConfig(k=3))
            if first_answer_rank([h.chunk.text for h in hits], item.answers) != 1:
                continue  # retrieval is measured elsewhere; here: what ask does with a good first chunk
            answer = ask(item.question, retriever, model=smol, config=AskConfig(k=3, max_tokens=48))
            if not answer.answered:
                continue  # under the similarity threshold (~5% of answerable questions, see benchmarks)
            assert answer.citations, answer
            if re.search(r"\[\d+\]", answer.text):  # a claim in no source carries no marker at all
                assert all(f"[{c.number}]" in answer.text for c in answer.citations), answer.text  # each citation is cited
            cited = {c.number: c for c in answer.citations}
            for sentence, number in re.findall(r"([^[\]]+?)\s*\[(\d+)\]", answer.text):
                terms = {t for t in tokenise(sentence) if len(t) > 3 or t.isdigit()} - {"answer", "source", "sources"}
                if terms and int(number) in cited:
                    assert terms & set(tokenise(cited[int(number)].text + " " + cited[int(number)].section)), (sentence, number)
            if first_answer_rank([answer.text], item.answers):
                right += 1
                assert any(first_answer_rank([c.text], item.answers) for c in answer.citations), (item, answer.text)
            first = answer.citations[0]
            assert first.file.endswith(".md") and 1 <= first.start <= first.end and "line" in first.where
            checked += 1
            if checked == 6:
                break
    assert checked == 6 and right >= 1


def test_stream_ask_yields_text_then_the_answer(squad_sqlite, embedder, smol):
    name, _, items = squad_sqlite
    with Retriever(name, embedder=embedder) as retriever:
        pieces = list(stream_ask(items[0].question, retriever, model=smol, config=AskConfig(k=2, max_tokens=24)))
    assert isinstance(pieces[-1], Answer) and all(isinstance(p, str) for p in pieces[:-1]) and len(pieces) >= 2  # a sentence a piece
    assert "".join(pieces[:-1]).strip()


def test_attribution_marks_sentences_by_shared_words():
    from kecil.rag.ask import Citation

    cites = [Citation(1, "a.md", None, 1, 1, "lines", "", "Denver Broncos won the game.", 1.0),
             Citation(2, "b.md", None, 3, 4, "lines", "", "The halftime show starred Coldplay.", 0.5)]
    assert attribute("Coldplay played at halftime. The Broncos won.", cites) == "Coldplay played at halftime. [2] The Broncos won. [1]"
    assert attribute("Coldplay sang [2].", cites) == "Coldplay sang. [2]"  # a right marker stays
    assert attribute("The Broncos won [2].", cites) == "The Broncos won. [1]"  # a wrong one is corrected
    assert attribute("The Broncos won [1] [2].", cites) == "The Broncos won. [1]"
    # a sentence copied with its line breaks is one sentence with one marker; a blank line ends it
    assert attribute("The Denver Broncos\nwon the game.\n\nColdplay sang.", cites) == "The Denver Broncos\nwon the game. [1]\n\nColdplay sang. [2]"
    # closing quotes and brackets after the stop belong to the sentence: one marker, after them
    assert attribute('Coldplay "sang at halftime." [2] (The Broncos won.)', cites) == 'Coldplay "sang at halftime." [2] (The Broncos won.) [1]'
    # a full stop inside an address does not end the sentence
    assert attribute("Mail coldplay@example.com at halftime. The Broncos won.", cites) == "Mail coldplay@example.com at halftime. [2] The Broncos won. [1]"
    # a marker whose source shares less than half of what the best one shares is moved to the best
    assert attribute("Coldplay starred in the halftime show for Denver [1].", cites) == "Coldplay starred in the halftime show for Denver. [2]"
    assert attribute("Coldplay starred in the halftime show for Denver and the Broncos [1].", cites).endswith(" [1]")


def test_a_sentence_with_a_number_in_no_source_is_withheld():
    from kecil.rag.ask import Citation, check_sentences

    cites = [Citation(1, "a.md", None, 1, 1, "lines", "", "The Broncos won 3 games in 2016.", 1.0),
             Citation(2, "b.md", None, 3, 4, "lines", "", "Coldplay played for 1,500 fans.", 0.5)]
    # a number that is in another source only, in a sentence about something else: withheld
    # (it stayed, citing neither, before numbers were tied to their words)
    assert attribute("The Broncos won 1500 games [1].", cites) == ""
    # numbers in no source: the sentence is held back, whatever words it shares
    text, withheld = check_sentences("The answer is: 18 [1]. The Broncos won 3 games. They won 2.5 games.\n\nColdplay played.", cites)
    assert text == " The Broncos won 3 games. [1]\n\nColdplay played. [2]"
    assert withheld == ["The answer is: 18.", "They won 2.5 games."]
    assert attribute("The answer is: 7 [1]", cites) == "" and attribute("In 2017 they lost.\n\nColdplay played.", cites) == "Coldplay played. [2]"
    # a last sentence that leads in to nothing is dropped (a newcomer saw it shown as the answer);
    # one that leads in to a list stays
    assert attribute("Coldplay played [2]. The answer to this question is:", cites) == "Coldplay played. [2]"
    assert attribute("The answer to this question is: [1]", cites) == ""
    assert attribute("The Broncos won 3 games. They were:\n1. Coldplay.", cites).startswith("The Broncos won 3 games. [1] They were:")
    # 2016 is the Broncos' year, not Coldplay's: withheld (it stayed, uncited, before)
    assert attribute("Coldplay played for 1,500 fans in 2016 [2].", cites) == ""
    assert attribute("Coldplay played for 1,500 fans [1].", cites) == "Coldplay played for 1,500 fans. [2]"
    # a list's numbers are not claims; an item withheld takes its number with it
    assert attribute("The Broncos:\n1. Won 3 games.\n2. Won 4 games.\n3. Had 1,500 fans.", cites) == "The Broncos: [1]\n1. Won 3 games. [1]\n3. Had 1,500 fans. [2]"
    # numbers the question asked about are not invented
    assert attribute("The 7th game was won by the Broncos.", cites, question="Who won the 7th game?") == "The 7th game was won by the Broncos. [1]"


def test_streamed_text_is_the_answer_text_with_checked_markers():
    """Whatever pieces the model streams in, the reader gets exactly `attribute` of the whole."""
    import random

    from kecil.rag.ask import AttributedStream, Citation

    cites = [Citation(1, "a.md", None, 1, 1, "lines", "", "Denver Broncos won the game in 2016.", 1.0),
             Citation(2, "b.md", None, 3, 4, "lines", "", "The halftime show starred Coldplay.", 0.5)]
    raws = [
        "  Coldplay played at halftime. The Broncos won [2].\nIn 2016 [1] [2] they won again!  ",
        "The Denver\nBroncos won\n\n\nColdplay [2] sang.\n\nThe end",
        "The Broncos won [2]. [1] Coldplay sang",
        "Nothing here [7]. Wait... the Broncos [12",
        "The answer is: 7 [1]",
        'He said: "Coldplay sang." [2] The Broncos (in 2016.) won.',
        "The Broncos:\n1. Won in 2016 [1].\n2. Lost in 2017.\n3. Coldplay sang.\n4. 3 fans left.",
        "In 2017 the Broncos lost.\n\nColdplay sang [2]. In 2016 they won. 12 fans came.",
        "Write to the Broncos at info@broncos.com within 2.5 days. Coldplay.[2]Sang",
        "Coldplay sang at halftime [2]. The answer to this question is:",
        "The Broncos won in 2016. The answer to this question is:\n1. The Broncos won.",
        "",
    ]
    rng = random.Random(0)
    for raw in raws:
        for _ in range(30):
            stream, out, at = AttributedStream(cites), [], 0
            while at < len(raw):
                step = rng.randint(1, 6)
                out.append(stream.feed(raw[at : at + step]))
                at += step
            out.append(stream.finish())
            assert "".join(out) == stream.text == attribute(raw.strip(), cites), (raw, out)


def test_the_closest_passage_is_the_sentence_that_answers(squad_sqlite, embedder):
    from kecil.rag.ask import closest_passage

    name, _, items = squad_sqlite
    found = holds = 0
    with Retriever(name, embedder=embedder) as retriever:
        for item in items[:80]:
            hits = retriever.search(item.question, SearchConfig(k=1))
            if not hits or first_answer_rank([hits[0].chunk.text], item.answers) != 1:
                continue
            passage = closest_passage(retriever, item.question, hits[0].chunk.text)
            assert passage and passage in " ".join(hits[0].chunk.text.split()) and len(passage) < len(hits[0].chunk.text)
            found += 1
            holds += first_answer_rank([passage], item.answers) == 1
    assert found >= 40 and holds >= 0.6 * found, (found, holds)


def test_even_a_one_token_answer_leads_with_the_closest_passage(squad_sqlite, embedder, smol):
    """One token of answer holds nothing from the sources: the reader still gets the best
    source's closest sentence, first, marked as a quote and cited."""
    from kecil.rag.ask import PASSAGE

    name, _, items = squad_sqlite
    with Retriever(name, embedder=embedder) as retriever:
        answer = ask(items[0].question, retriever, model=smol, config=AskConfig(max_tokens=1))
        hits = retriever.search(items[0].question, SearchConfig(k=1))
    assert answer.answered and answer.text.startswith(f'{PASSAGE} "{answer.evidence}" [1]')
    assert [c.number for c in answer.citations] == [1] and answer.evidence in " ".join(answer.citations[0].text.split())
    assert answer.citations[0].text == hits[0].chunk.text


# A tiny handbook where the wrong answers came from (issue 26): two numbers the 135M
# model took from the wrong line, and a Thai file the model copies from when it is among the sources.
HANDBOOK = """# Staff handbook

## Leave

New staff get 18 days of annual leave a year.

Sick leave of more than 2 days needs a doctor's certificate.

## Benefits

The gym allowance is SGD 60 per month.

Staff who move from abroad get a relocation budget of 10,000 SGD.
"""
CANTEEN_TH = "# โรงอาหาร\n\nโรงอาหารของบริษัทเปิดทุกวันตั้งแต่เวลาเจ็ดโมงเช้าถึงหนึ่งทุ่ม พนักงานใหม่ได้รับคูปองอาหารกลางวันฟรีทุกวันในเดือนแรก\n"
LEAVE = "How many days of leave do new staff get?"


def _handbook_citations():
    from kecil.rag.ask import Citation

    leave, benefits = HANDBOOK.split("## Benefits")
    return [Citation(1, "handbook.md", None, 3, 7, "lines", "Staff handbook > Leave", leave.split("## Leave")[1].strip(), 1.0),
            Citation(2, "handbook.md", None, 9, 13, "lines", "Staff handbook > Benefits", benefits.strip(), 0.5)]


def test_a_number_counts_only_next_to_the_words_it_is_about():
    """A number in the model's sentence is supported only by a source sentence that holds it and
    shares the most words with what the sentence says about it (and with the question)."""
    from kecil.rag.ask import check_sentences

    cites = _handbook_citations()
    # the two wrong answers: each number is in the sources, on another line
    assert check_sentences("The answer is: 2 [2]", cites, LEAVE) == ("", ["The answer is: 2"])
    assert check_sentences("New staff get 2 days of leave. [1]", cites, LEAVE)[1] == ["New staff get 2 days of leave."]
    gym = "How much is the gym allowance?"
    assert check_sentences("The gym allowance is 10,000 SGD per month. [1]", cites, gym) == ("", ["The gym allowance is 10,000 SGD per month."])
    # the same numbers next to their own words stay, cited
    assert attribute("The answer is: 18 [2]", cites, LEAVE) == "The answer is: 18 [1]"
    assert attribute("New staff get 18 days of annual leave.", cites, LEAVE) == "New staff get 18 days of annual leave. [1]"
    assert attribute("The gym allowance is SGD 60 per month [1].", cites, gym) == "The gym allowance is SGD 60 per month. [2]"
    assert attribute("Sick leave over 2 days needs a certificate.", cites, LEAVE) == "Sick leave over 2 days needs a certificate. [1]"
    assert attribute("Staff moving from abroad get a relocation budget of 10,000 SGD.", cites, gym).endswith("10,000 SGD. [2]")


def test_a_reply_in_another_script_than_the_question_stops_at_once():
    from kecil.rag.ask import AttributedStream
    from kecil.rag.scripts import main_script

    cites = _handbook_citations()
    question = "Berapa hari cuti untuk staf baru?"  # Indonesian: Latin script
    stream = AttributedStream(cites, question, script=main_script(question))
    fed = []
    for piece in ("Staf baru mendapat cuti tahunan. ", "พนักงาน", "ใหม่ได้รับ", "คูปองอาหาร", "กลางวันฟรี", "ทุกวัน"):
        fed.append(stream.feed(piece))
        if stream.stopped:
            break
    assert stream.off_script == "Thai" and len(fed) <= 4  # stopped within a few tokens, not at max_tokens
    assert "".join(fed) + stream.finish() == stream.text == "Staf baru mendapat cuti tahunan."
    # a source's name in its own script inside a sentence in the question's is not a change of script
    english = AttributedStream(cites, LEAVE, script=main_script(LEAVE))
    assert english.feed("New staff get 18 days at โรงอาหาร. And") and not english.stopped


@pytest.fixture(scope="module")
def handbook_answer(tmp_path_factory, kecil_home, embedder, smol):
    """(stream pieces, the leave chunk's text) of the real model asked about leave on the handbook and the Thai canteen file."""
    from kecil.rag.ingest import IngestConfig, ingest

    folder = tmp_path_factory.mktemp("handbook")
    (folder / "handbook.md").write_text(HANDBOOK)
    (folder / "kantin.md").write_text(CANTEEN_TH)
    ingest(IngestConfig(folder, "handbook"), embedder=embedder)
    with Retriever("handbook", embedder=embedder) as retriever:
        pieces = list(stream_ask(LEAVE, retriever, model=smol, config=AskConfig(k=3, max_tokens=128)))
    return pieces


def test_every_answer_leads_with_the_evidence(handbook_answer):
    """The sentence that answers comes first, quoted and cited; the model's sentences follow
    it, checked; the streamed pieces add up to the answer, and as_dict carries the evidence."""
    from kecil.rag.ask import PASSAGE

    *pieces, answer = handbook_answer
    quote = "New staff get 18 days of annual leave a year."
    assert answer.answered and answer.evidence == quote and pieces[0] == f'{PASSAGE} "{quote}" [1]'
    assert answer.citations[0].number == 1 and quote in answer.citations[0].text and "line" in answer.citations[0].where
    assert "".join(pieces) == answer.text and answer.as_dict()["evidence"] == quote
    assert "The answer is: 2" not in answer.text


def test_the_model_is_stopped_when_it_turns_to_another_script(handbook_answer):
    """The 135M model copies its sources, the Thai one too, into an English answer: it is
    stopped there (not at max_tokens), its Thai is not shown, and a note says why."""
    *pieces, answer = handbook_answer
    assert "Thai" in answer.note and answer.text.endswith(answer.note) and pieces[-1].strip() == answer.note
    assert not regex.search(r"\p{Thai}", answer.text)
    assert answer.usage is None  # kecil closed the stream before its last chunk (which carries the usage): not run to the end


def test_a_repeated_sentence_ends_the_stream():
    from kecil.rag.ask import AttributedStream, Citation

    cites = [Citation(1, "a.md", None, 1, 1, "lines", "", "Denver Broncos won the game.", 1.0),
             Citation(2, "b.md", None, 3, 4, "lines", "", "The halftime show starred Coldplay.", 0.5)]
    stream = AttributedStream(cites)
    out = [stream.feed(piece) for piece in ("Coldplay sang. The Broncos ", "won [2]. Coldplay ", "sang [1]. And ", "then more.")]
    assert stream.repeating and "".join(out) + stream.finish() == stream.text == "Coldplay sang. [2] The Broncos won. [1]"


def test_stream_ask_pieces_add_up_to_the_answer(squad_sqlite, embedder, smol):
    name, _, items = squad_sqlite
    with Retriever(name, embedder=embedder) as retriever:
        for item in items[:3]:
            pieces = list(stream_ask(item.question, retriever, model=smol, config=AskConfig(k=3, max_tokens=40)))
            answer = pieces[-1]
            if answer.answered:
                assert "".join(pieces[:-1]) == answer.text


def test_cli_ask_json(squad_kb):
    name, _, _ = squad_kb
    done = kecil("ask", "Which NFL team represented the AFC at Super Bowl 50?", "--kb", name, "--k", "3", "--max-tokens", "40", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["answered"] and answer["citations"]
    assert isinstance(answer["withheld"], list) and not any(w in answer["text"] for w in answer["withheld"])
    for citation in answer["citations"]:  # only sources the answer cites are listed, each with its place
        assert f"[{citation['number']}]" in answer["text"]
        assert citation["file"].endswith(".md") and citation["lines"][0] >= 1 and citation["text"]


def test_postgresql_answers_and_cites_exactly_as_sqlite(squad_sqlite, postgres_url, embedder, smol):
    """The same knowledge base in both engines (imported: the same chunks and vectors) gives the
    same retrieval, the same answer and the same citations, file, lines and text."""
    from kecil.rag.kb_names import kb_path
    from kecil.rag.transfer import import_kb

    name, _, items = squad_sqlite
    url = f"{postgres_url}&kb=ask-same"
    import_kb(kb_path(name), url)
    with Retriever(name, embedder=embedder) as sqlite, Retriever(url, embedder=embedder) as postgres:
        for item in items[:8]:
            for method in ("bm25", "dense", "hybrid"):
                config = SearchConfig(k=5, method=method)
                a, b = sqlite.search(item.question, config), postgres.search(item.question, config)
                assert [(h.chunk.path, h.chunk.start, h.chunk.text) for h in a] == [(h.chunk.path, h.chunk.start, h.chunk.text) for h in b]
                assert [h.score for h in a] == pytest.approx([h.score for h in b], rel=1e-4, abs=1e-5)
        for item in items[:2]:
            one, two = (ask(item.question, r, model=smol, config=AskConfig(k=3, max_tokens=32)) for r in (sqlite, postgres))
            assert one.text == two.text and one.answered == two.answered
            assert [{**c.as_dict(), "score": None} for c in one.citations] == [{**c.as_dict(), "score": None} for c in two.citations]
            assert [c.score for c in one.citations] == pytest.approx([c.score for c in two.citations], abs=1e-5)

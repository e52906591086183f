"""SQuAD answer normalization and answer-in-passage recall (relm.eval.answers)."""

from relm.eval.answers import answer_in_text, answer_recall, normalize_answer


def test_normalize_answer_follows_squad():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an Apple, a day") == "apple day"
    assert normalize_answer("Levi's Stadium") == "levis stadium"
    assert normalize_answer("   ") == ""


def test_answer_in_text_matches_whole_words_only():
    text = "The Denver Broncos defeated the Carolina Panthers 24–10."
    assert answer_in_text(["denver broncos"], text)
    assert answer_in_text(["Panthers", "nope"], text)
    assert not answer_in_text(["Pant"], text)  # a word prefix is not the answer
    assert not answer_in_text(["the"], text)  # normalizes to nothing: never matches
    assert not answer_in_text([], text)


def test_answer_recall_over_passages():
    assert answer_recall(["Santa Clara"], ["nothing here", "played at Santa Clara, California"]) == 1.0
    assert answer_recall(["Santa Clara"], ["nothing here"]) == 0.0

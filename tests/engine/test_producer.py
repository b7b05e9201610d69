"""The decode thread runs further ahead only while the model loads, then PREFETCH ahead."""
import time

from dcx.engine.discover import Candidate
from dcx.engine.run import PREFETCH, _Producer
from dcx.engine.scoring import Chunk, Stats


class CountingDecoder:
    """Decodes instantly; counts the chunks it was asked for."""

    timings: dict = {}

    def __init__(self):
        self.decoded = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def decode(self, paths):
        self.decoded += 1
        return paths


def make_chunks(n):
    for k in range(n):
        chunk = Chunk()
        chunk.add(Candidate(f"f{k}.png", size=1), None)
        yield chunk


def wait_for(condition, timeout=5.0):
    end = time.monotonic() + timeout
    while not condition() and time.monotonic() < end:
        time.sleep(0.01)
    return condition()


def test_decodes_ahead_while_the_model_loads_then_only_prefetch_ahead():
    decoder = CountingDecoder()
    with _Producer(make_chunks(40), lambda: decoder, Stats(), ahead_while_loading=10) as producer:
        # the model "loads": 10 chunks queued and one decoded in hand, not more
        assert wait_for(lambda: decoder.decoded == 11)
        time.sleep(0.2)
        assert decoder.decoded == 11
        chunks = iter(producer)
        next(chunks)  # the consumer starts: the queue drains below PREFETCH before decoding resumes
        time.sleep(0.2)
        assert decoder.decoded == 11
        for _ in range(10 - PREFETCH):
            next(chunks)
        assert wait_for(lambda: decoder.decoded == 12)
        time.sleep(0.2)
        assert decoder.decoded == 12  # PREFETCH queued and one in hand from now on
        assert [c.decoded for c in chunks] == [[f"f{k}.png"] for k in range(10 - PREFETCH + 1, 40)]


def test_a_stopped_producer_quits_while_the_queue_is_full():
    decoder = CountingDecoder()
    producer = _Producer(make_chunks(40), lambda: decoder, Stats(), ahead_while_loading=3)
    with producer:
        assert wait_for(lambda: decoder.decoded == 4)
    assert not producer._thread.is_alive() and decoder.decoded == 4

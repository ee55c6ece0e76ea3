"""Dramatiq messages as compact JSON, written and read with orjson.

Why not dramatiq's own `JSONEncoder`: on a Redis worker keeping up with one client (the
side-by-side e2e phase), `Message.decode` was 8 % of the worker's GIL samples (py-spy), most
of it the stdlib's `json.loads`; the submitter pays more for `json.dumps`. For a job's
message (`bench/message_encoding.py`) encoding takes 0.07x the stdlib's time, decoding 0.5x
(the check for long integers below is a third of it). The wire format does not change: any
dramatiq process reads what we send, and we read what it sends.

orjson is stricter than the stdlib in two ways, and where it would refuse a value or change
it the stdlib does the work instead, so every message reads back exactly as before:
- it writes no integer beyond 64 bits (a job's parameters may hold up to
  `json_values.MAX_INTEGER_DIGITS` digits), no object key but a string, and no lone
  surrogate: `dumps` raises, and the stdlib writes the message;
- it reads an integer beyond 64 bits as a float, silently, and refuses `NaN`, `Infinity` and
  lone surrogates. An integer orjson would turn into a float has at least 20 digits, so a
  message holding a run of 20 digits anywhere (in a string too) is read by the stdlib, as is
  one orjson refuses.
A non-finite float is written as `null` (the stdlib writes `NaN`, which is not JSON): nothing
skillq sends holds one, as every way in refuses them (`skillq.json_values`).
"""

from __future__ import annotations

import orjson
from dramatiq.encoder import Encoder, JSONEncoder, MessageData

#: Types orjson would write on its own (datetimes, dataclasses, subclasses of str, int, dict
#: and list) go through the stdlib, which writes or refuses them as dramatiq always did.
_DUMPS_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
#: Digits become NUL bytes, so "twenty digits in a row" (an integer orjson may read as a
#: float; 2**64 has twenty) is a substring search: a regular expression took longer than
#: orjson's whole read. A NUL in the message itself only sends it to the stdlib.
_DIGITS_TO_NUL = bytes.maketrans(b"0123456789", bytes(10))
_LONG_DIGITS = bytes(20)


class MessageEncoder(Encoder):
    """orjson for the common message, dramatiq's `JSONEncoder` for the rest (see the module)."""

    def __init__(self) -> None:
        self._stdlib = JSONEncoder()

    def encode(self, data: MessageData) -> bytes:
        try:
            return orjson.dumps(data, option=_DUMPS_OPTIONS)
        except TypeError:
            return self._stdlib.encode(data)

    def decode(self, data: bytes) -> MessageData:
        if _LONG_DIGITS not in data.translate(_DIGITS_TO_NUL):
            try:
                return orjson.loads(data)
            except orjson.JSONDecodeError:
                pass
        return self._stdlib.decode(data)

"""The exception hierarchy every layer raises from.

Codecs raise ``DecodeError`` (a subclass of ``ProtocolError``) for malformed input and nothing else;
network layers raise ``ProtocolError`` when a peer breaks a protocol, which closes that connection.
``FileshareError`` is what the CLI turns into a one-line message and exit code 1.
"""


class FileshareError(Exception):
    """Base class: an error with a message a user can act on."""


class ProtocolError(FileshareError):
    """A peer (or a file) broke a wire format or protocol rule."""


class DecodeError(ProtocolError):
    """Bytes that do not decode under a codec's rules."""


class LimitExceeded(ProtocolError):
    """A length, count or size went past one of the limits in ``fileshare.limits``."""


class VerificationError(FileshareError):
    """Data that does not match the hash its CID names."""


class NotFound(FileshareError):
    """A block, CID, peer or file that is not there."""

"""Broker-to-broker negotiation, without I/O.

* :mod:`broker.negotiation.messages` - the seven message types (request, offer, accept,
  decline, reclaim, return, heartbeat) as dataclasses, and a JSON codec that validates every
  field and raises :class:`~broker.negotiation.messages.MessageError` naming what is wrong.
* :mod:`broker.negotiation.contracts` - the contract record and its state machine
  (proposed, agreed, provisioning, active, reclaiming, closed, failed).

Nothing here opens a socket or a file: the service (:mod:`broker.service`) feeds bytes in and
persists what comes out.
"""

from broker.negotiation.contracts import (
    Contract,
    ContractState,
    IllegalTransition,
    Role,
    Transition,
)
from broker.negotiation.messages import (
    Accept,
    Decline,
    Heartbeat,
    HostOffer,
    Message,
    MessageError,
    Needs,
    Offer,
    Reclaim,
    Request,
    Return,
    Terms,
    decode,
    encode,
)

__all__ = [
    "Accept",
    "Contract",
    "ContractState",
    "Decline",
    "Heartbeat",
    "HostOffer",
    "IllegalTransition",
    "Message",
    "MessageError",
    "Needs",
    "Offer",
    "Reclaim",
    "Request",
    "Return",
    "Role",
    "Terms",
    "Transition",
    "decode",
    "encode",
]

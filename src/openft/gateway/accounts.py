"""Provider accounts: where the gateway may send an organisation's files,
fine-tuning jobs and chat completions.

The operator keeps them in one JSON file (``OPENFT_PROVIDERS_FILE``, by
default ``$OPENFT_HOME/providers.json``; ``openft providers add|list|remove``
edit it), a mapping from account name to account::

    {"east": {"kind": "openai-compatible", "base_url": "https://east.example.com/v1",
              "api_key_env": "EAST_OPENFT_KEY", "organizations": ["research"],
              "timeout_seconds": 60}}

The credential itself is never in the file, the database, a response or a
log line: the file names where to read it (an environment variable of the
server, or a file), and it is read when a request is forwarded, so a rotated
key needs no restart. The server re-reads the file when it changes; a file
that no longer parses keeps the last good accounts and logs why.

The account named ``openft`` (kind ``openft``) is this deployment and always
exists; an operator may add other names of kind ``openft`` (the provider
name a gateway client already sends) with their own organisations.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from openft.config import BUILTIN_PROVIDER
from openft.errors import InvalidRequest, NotFound

log = logging.getLogger("openft.gateway")

AccountKind = Literal["openft", "openai-compatible"]
HEADER = "x-tfy-provider-name"
"""The request header that names the account (TrueFoundry's)."""
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ALL_ORGANIZATIONS = "*"


class ProvidersFileError(ValueError):
    """The providers file cannot be used; the message names the account and field."""


class CredentialMissing(RuntimeError):
    """The account's credential source is empty or unreadable (the message names the source, not a value)."""


class ProviderAccount(BaseModel):
    """One account, as the providers file holds it (no credential value)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: AccountKind = "openft"
    base_url: str | None = Field(None, description="The upstream's OpenAI base URL, e.g. https://host/v1.")
    api_key_env: str | None = Field(None, description="Environment variable of the server holding the key.")
    api_key_file: Path | None = Field(None, description="File holding the key (its whole content, stripped).")
    organizations: tuple[str, ...] = Field((), description="Organisation names or ids allowed; '*' for all.")
    timeout_seconds: float = Field(60.0, gt=0, le=3600, description="Bound on each wait for the upstream, and "
                                   "on each wait for the client to take the next piece of an answer.")
    connect_timeout_seconds: float = Field(5.0, gt=0, le=300, description="Bound on connecting to it.")
    deadline_seconds: float = Field(3600.0, gt=0, le=86400, description="Bound on a whole routed request, "
                                    "streams and downloads included.")

    @model_validator(mode="after")
    def _consistent(self) -> ProviderAccount:
        if self.kind == "openft":
            if self.base_url or self.api_key_env or self.api_key_file:
                raise ValueError("an 'openft' account is this deployment: it takes no base_url or key")
            return self
        if not self.base_url or not re.fullmatch(r"https?://[^\s/?#@]+(/[^\s?#]*)?", self.base_url):
            raise ValueError("base_url must be an http(s) URL without credentials, query or fragment")
        if (self.api_key_env is None) == (self.api_key_file is None):
            raise ValueError("name exactly one of api_key_env and api_key_file for the upstream's key")
        return self

    @property
    def upstream(self) -> bool:
        return self.kind != "openft"

    @property
    def shared(self) -> bool:
        """Whether several organisations may use it (``*``, or more than one
        named): each then reaches only the upstream objects it made or was
        given through the gateway, since they all share the upstream's key."""
        return len(self.organizations) != 1 or self.organizations[0] == ALL_ORGANIZATIONS

    def allows(self, org_id: str, org_name: str | None) -> bool:
        allowed = self.organizations
        return ALL_ORGANIZATIONS in allowed or org_id in allowed or (org_name is not None and org_name in allowed)

    def credential(self) -> str:
        """The upstream key, read now from its source."""
        if self.api_key_env is not None:
            value = os.environ.get(self.api_key_env, "").strip()
            source = f"environment variable {self.api_key_env}"
        else:
            assert self.api_key_file is not None
            source = f"file {self.api_key_file}"
            try:
                value = self.api_key_file.read_text().strip()
            except OSError:
                value = ""
        if not value or any(c in value for c in "\r\n\0"):
            raise CredentialMissing(f"the key's source ({source}) is empty or unreadable")
        return value


BUILTIN = ProviderAccount(kind="openft", organizations=(ALL_ORGANIZATIONS,))


def parse_accounts(text: str) -> dict[str, ProviderAccount]:
    """The accounts of a providers file's text, or a ProvidersFileError naming what is wrong."""
    try:
        raw = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise ProvidersFileError(f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ProvidersFileError("must be a JSON object mapping account names to accounts")
    accounts: dict[str, ProviderAccount] = {}
    for name, body in raw.items():
        if not NAME.fullmatch(name):
            raise ProvidersFileError(f"account name {name!r}: letters, digits, '_', '.', '-', at most 64")
        if name == BUILTIN_PROVIDER:
            raise ProvidersFileError(f"account name {name!r} is this deployment's own and cannot be redefined")
        try:
            accounts[name] = ProviderAccount.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ProvidersFileError(f"account {name!r}{' field ' + where if where else ''}: {first['msg']}") from None
    _one_account_per_key(accounts)
    return accounts


def _one_account_per_key(accounts: dict[str, ProviderAccount]) -> None:
    """Two accounts on one upstream with one key would be one upstream organisation under two names:
    an organisation alone on one would see all the other's organisations made (the gateway keeps
    organisations apart per account). One account, with every organisation, is what that is."""
    seen: dict[tuple[str, str], str] = {}
    for name, account in accounts.items():
        if not account.upstream:
            continue
        assert account.base_url is not None
        key = (account.base_url.rstrip("/").lower(), f"env:{account.api_key_env}" if account.api_key_env
               else f"file:{Path(account.api_key_file or '').resolve()}")
        if key in seen:
            raise ProvidersFileError(f"accounts {seen[key]!r} and {name!r} reach the same upstream with the same "
                                     "key; make them one account with all their organisations")
        seen[key] = name


def read_accounts(path: Path) -> dict[str, ProviderAccount]:
    """The accounts in ``path`` (none when it does not exist)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    return parse_accounts(text)


def write_accounts(path: Path, accounts: dict[str, ProviderAccount]) -> None:
    """Replace the file atomically (a running server never reads half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {name: account.model_dump(mode="json", exclude_defaults=True) | {"kind": account.kind}
            for name, account in sorted(accounts.items())}
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_text(json.dumps(body, indent=2) + "\n")
    os.replace(staging, path)


@dataclass(frozen=True)
class Stamp:
    """What tells a changed file: a rewrite by rename is a new inode, an edit in place a new ctime."""

    inode: int
    mtime_ns: int
    ctime_ns: int
    size: int


class AccountBook:
    """The accounts a running server routes by: the file's, re-read when it
    changes (one ``stat`` per look-up), plus this deployment's own."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._stamp: Stamp | None = None
        self._accounts: dict[str, ProviderAccount] = read_accounts(path)  # start-up fails on a bad file
        self._stamp = self._current_stamp()

    def _current_stamp(self) -> Stamp | None:
        try:
            found = self.path.stat()
        except FileNotFoundError:
            return None
        return Stamp(found.st_ino, found.st_mtime_ns, found.st_ctime_ns, found.st_size)

    def _refresh(self) -> dict[str, ProviderAccount]:
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return self._accounts
        with self._lock:
            try:
                self._accounts = read_accounts(self.path)
            except (ProvidersFileError, OSError) as exc:
                log.error("providers file %s not reloaded, keeping the previous accounts: %s", self.path, exc)
            self._stamp = stamp
            return self._accounts

    def get(self, name: str) -> ProviderAccount | None:
        if name == BUILTIN_PROVIDER:
            return BUILTIN
        return self._refresh().get(name)

    def upstream_names(self) -> frozenset[str]:
        return frozenset(name for name, account in self._refresh().items() if account.upstream)

    def resolve(self, name: str, org_id: str, org_name: str | None) -> ProviderAccount:
        """The account ``name`` for this organisation: unknown is a 400 naming the header, one it may not
        use a 404 (like any object it cannot see)."""
        account = self.get(name)
        if account is None:
            usable = ", ".join(self.usable(org_id, org_name))
            raise InvalidRequest(f"Unknown provider account {name[:64]!r} in the {HEADER} header; "
                                 f"this organisation may use: {usable}.", param=HEADER, code="unknown_provider")
        if not account.allows(org_id, org_name):
            raise NotFound("provider_account", name, param=HEADER)
        return account

    def usable(self, org_id: str, org_name: str | None) -> dict[str, ProviderAccount]:
        """The accounts this organisation may use, this deployment's first."""
        found = {BUILTIN_PROVIDER: BUILTIN}
        found.update((name, account) for name, account in sorted(self._refresh().items())
                     if account.allows(org_id, org_name))
        return found

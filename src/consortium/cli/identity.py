"""`consortium node init|reencrypt` and `consortium genesis create|deal|sign|verify`.

Passphrases come from environment variables or a hidden prompt, never from the command line.
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

import typer

from consortium.chain.accounts import derive_account
from consortium.cli.common import console, fail, handle_errors, secret
from consortium.core.errors import ConfigError, GenesisError
from consortium.core.genesis import (
    DEFAULT_UNIXFS_PROFILE,
    GENESIS_FILE,
    UNIXFS_PROFILES,
    Genesis,
    Purpose,
)
from consortium.core.identity import (
    KEY_FILE,
    PASSPHRASE_ENV,
    TLS_KEY_FILE,
    NodeIdentity,
    PublicIdentity,
    keys_encrypted,
    reencrypt_keys,
)
from consortium.core.keyfile import FORMAT

genesis_app = typer.Typer(help="Create, sign and verify the genesis manifest of a consortium.")

#: The new passphrase of `node reencrypt --change-passphrase` (CONSORTIUM_PASSPHRASE: the old).
NEW_PASSPHRASE_ENV = "CONSORTIUM_NEW_PASSPHRASE"


def node_passphrase(directory: Path) -> str | None:
    """The passphrase of the keys in `directory` if they are encrypted, else None."""
    if not keys_encrypted(directory):
        return None
    return secret(PASSPHRASE_ENV, f"passphrase of the keys in {directory}")


def _new_passphrase(env: str) -> str:
    passphrase = secret(env, "new passphrase for the keys", confirm=True)
    if not passphrase:
        raise ConfigError(f"the passphrase is empty: set {env} to a non-empty passphrase")
    return passphrase


@handle_errors
def node_init(
    name: str = typer.Option(
        ..., "--name", help="Human-readable member name, unique in the consortium."
    ),
    directory: Path = typer.Option(..., "--dir", help="Folder for this node's keys and state."),
    address: str = typer.Option(
        "127.0.0.1:7000", "--address", help="host:port where peers reach this node over gRPC."
    ),
    encrypt: bool = typer.Option(
        False,
        "--encrypt",
        help=f"Encrypt the private keys with a passphrase (from ${PASSPHRASE_ENV} or a prompt).",
    ),
) -> None:
    """Create a node identity: Ed25519 key (0600), TLS key bound to it, and a public node.pub."""
    if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
        fail("--name must be 1-64 letters, digits, '-' or '_'", 2)
    _check_address(address)
    ident = NodeIdentity.generate(name, address)
    ident.evm_address = derive_account(ident).address  # for anchoring; derived, no key file
    ident.save(directory, _new_passphrase(PASSPHRASE_ENV) if encrypt else None)
    console.print(f"created node [bold]{name}[/] id {ident.node_id}")
    console.print(f"share {directory / 'node.pub'} with the other members; keep node.key private")


@handle_errors
def node_reencrypt(
    directory: Path = typer.Option(..., "--dir", help="The node's folder (from `node init`)."),
    change_passphrase: bool = typer.Option(
        False,
        "--change-passphrase",
        help=f"Encrypt under a new passphrase (from ${NEW_PASSPHRASE_ENV} or a prompt); "
        "this also encrypts keys that are not encrypted yet.",
    ),
) -> None:
    """Rewrite node.key and tls.key in the current encrypted format (migrates old key files).

    The current passphrase comes from $CONSORTIUM_PASSPHRASE or a prompt. Each file is replaced
    atomically (0600); if interrupted, run the same command again.
    """
    passphrase = node_passphrase(directory)
    new = _new_passphrase(NEW_PASSPHRASE_ENV) if change_passphrase else passphrase
    if new is None:
        fail(
            f"the keys in {directory} are not encrypted; add --change-passphrase to encrypt them", 2
        )
    reencrypt_keys(directory, passphrase, new)
    console.print(f"rewrote {directory / KEY_FILE} and {directory / TLS_KEY_FILE} ({FORMAT})")


def _check_address(address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--address must be host:port, got {address!r}")


def _parse_purpose(text: str) -> Purpose:
    """NAME or NAME:EPSILON:DELTA."""
    parts = text.split(":")
    if len(parts) == 1 and parts[0]:
        return Purpose(parts[0])
    if len(parts) == 3 and parts[0]:
        try:
            eps, delta = float(parts[1]), float(parts[2])
        except ValueError as exc:
            raise ConfigError(f"purpose budget must be numbers: {text!r}") from exc
        if eps <= 0 or not 0 < delta < 1:
            raise ConfigError(f"purpose budget needs epsilon > 0 and 0 < delta < 1: {text!r}")
        return Purpose(parts[0], eps, delta)
    raise ConfigError(f"--purpose must be NAME or NAME:EPSILON:DELTA, got {text!r}")


_PURPOSE_KEYS = {"name", "epsilon", "delta", "data_categories", "recipients", "retention"}


def load_purposes(path: Path) -> list[Purpose]:
    """The `[[purpose]]` tables of a TOML file, each checked (ConfigError naming the file)."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not TOML: {exc}") from exc
    tables = data.get("purpose")
    if set(data) != {"purpose"} or not isinstance(tables, list) or not tables:
        raise ConfigError(f"{path}: declare purposes as [[purpose]] tables, and nothing else")
    out = []
    for i, t in enumerate(tables, 1):
        unknown = sorted(set(t) - _PURPOSE_KEYS)
        if unknown:
            raise ConfigError(
                f"{path}: purpose {i}: unknown key {unknown[0]!r} "
                f"(known: {', '.join(sorted(_PURPOSE_KEYS))})"
            )
        name = t.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{path}: purpose {i} needs a name")
        eps, delta = t.get("epsilon"), t.get("delta")
        if (eps is None) != (delta is None):
            raise ConfigError(f"{path}: purpose {name!r}: give both epsilon and delta, or neither")
        if eps is not None:
            _parse_purpose(f"{name}:{eps}:{delta}")  # the same checks as --purpose
        lists = {}
        for key in ("data_categories", "recipients"):
            value = t.get(key, [])
            if not isinstance(value, list):
                raise ConfigError(f"{path}: purpose {name!r}: {key} must be a list of texts")
            lists[key] = tuple(value)
        try:
            out.append(
                Purpose(
                    name,
                    None if eps is None else float(eps),
                    None if delta is None else float(delta),
                    lists["data_categories"],
                    lists["recipients"],
                    t.get("retention", ""),
                )
            )
        except GenesisError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return out


@genesis_app.command("create")
@handle_errors
def genesis_create(
    member: list[Path] = typer.Option(..., "--member", help="A member's node.pub (repeat)."),
    purpose: list[str] = typer.Option(
        [], "--purpose", help="A purpose data may be used for: NAME or NAME:EPSILON:DELTA."
    ),
    purposes_file: Path | None = typer.Option(
        None,
        "--purposes",
        help="A TOML file of purposes ([[purpose]] tables: name, epsilon, delta, and for the "
        "record of processing data_categories, recipients, retention); with or instead of "
        "--purpose.",
    ),
    consortium: str = typer.Option("consortium", "--name", help="Name of the consortium."),
    out: Path = typer.Option(Path(GENESIS_FILE), "--out", help="Where to write the manifest."),
    quorum: int | None = typer.Option(None, help="Cosignatures for finality (default ceil(2n/3))."),
    unixfs_profile: str = typer.Option(
        DEFAULT_UNIXFS_PROFILE,
        "--unixfs-profile",
        help=f"How the store cuts files into blocks, so their CIDs: {', '.join(UNIXFS_PROFILES)} "
        "(unixfs-v0-2015 gives the Qm… CIDs of kubo's default `ipfs add`).",
    ),
    beacon_member: list[str] = typer.Option(
        [],
        "--beacon-member",
        help="A member (by name) of the beacon group, who deals the beacon key and makes each "
        "round's beacon (repeat; at least 4; default every member). A large consortium names "
        "a smaller group so the ceremony and each round's partials do not grow with it; the "
        "beacon is then unpredictable while at most a third of the group is dishonest.",
    ),
) -> None:
    """Write an unsigned genesis manifest listing the members and purposes."""
    if out.exists():
        fail(f"{out} already exists; refusing to overwrite a manifest", 2)
    if not purpose and purposes_file is None:
        fail("declare at least one purpose (--purpose NAME or --purposes FILE)", 2)
    members = [PublicIdentity.load(p) for p in member]
    by_name = {m.name: m.node_id for m in members}
    unknown = [b for b in beacon_member if b not in by_name]
    if unknown:
        fail(f"--beacon-member {unknown[0]!r} is not one of the --member names", 2)
    g = Genesis.create(
        consortium,
        members,
        [_parse_purpose(p) for p in purpose]
        + ([] if purposes_file is None else load_purposes(purposes_file)),
        int(time.time()),
        quorum,
        unixfs_profile=unixfs_profile,
        beacon_members=[by_name[b] for b in beacon_member] or None,
    )
    g.save(out)
    dealers = (
        "each member"
        if not g.beacon_members
        else f"each of the {len(g.beacon_members)} members of the beacon group"
    )
    console.print(
        f"wrote {out}: {len(members)} members, quorum {g.quorum}; "
        f"{dealers} now runs `consortium genesis deal`, then each member runs "
        "`consortium genesis sign`"
    )


def _manifest_and_identity(
    directory: Path, manifest: Path | None
) -> tuple[Path, Genesis, NodeIdentity]:
    """The manifest a member works on (default DIR/genesis.json) and the member's identity."""
    path = manifest or directory / GENESIS_FILE
    return path, Genesis.load(path), NodeIdentity.load(directory, node_passphrase(directory))


@genesis_app.command("deal")
@handle_errors
def genesis_deal(
    directory: Path = typer.Option(..., "--dir", help="The dealing node's folder."),
    manifest: Path | None = typer.Option(
        None, "--genesis", help="Manifest to add the dealing to (default DIR/genesis.json)."
    ),
) -> None:
    """Add this node's share of the beacon's key setup: commitments and one encrypted share per
    member of the beacon group (every member, unless the manifest names a group). Every dealer
    deals before anyone signs."""
    path, g, ident = _manifest_and_identity(directory, manifest)
    g.deal(ident)
    g.save(path)
    missing = g.missing_dealings()
    console.print(
        f"{ident.name} dealt in {path}; "
        + (
            f"still to deal: {', '.join(missing)}"
            if missing
            else ("every member" if not g.beacon_members else "the beacon group")
            + " has dealt: each member now runs `consortium genesis sign`"
        )
    )


@genesis_app.command("sign")
@handle_errors
def genesis_sign(
    directory: Path = typer.Option(..., "--dir", help="The signing node's folder."),
    manifest: Path | None = typer.Option(
        None, "--genesis", help="Manifest to sign in place (default DIR/genesis.json)."
    ),
) -> None:
    """Check every dealing and the shares dealt to this node, then sign the manifest."""
    path, g, ident = _manifest_and_identity(directory, manifest)
    g.sign(ident)
    g.save(path)
    missing = g.missing_signatures()
    console.print(
        f"{ident.name} signed {path}; "
        + (f"still missing: {', '.join(missing)}" if missing else "all members have signed")
    )


@genesis_app.command("verify")
@handle_errors
def genesis_verify(
    manifest: Path = typer.Argument(Path(GENESIS_FILE), help="Manifest file or node folder."),
) -> None:
    """Check every member's signature; exits non-zero naming the first problem."""
    g = Genesis.load(manifest)
    g.verify()
    console.print(
        f"genesis OK: consortium {g.consortium!r}, {len(g.members)} members, quorum {g.quorum}, "
        f"purposes {', '.join(p.name for p in g.purposes)}, digest {g.digest().hex()[:16]}…"
    )
    if g.beacon_members:
        names = ", ".join(g.member(i).name for i in g.beacon_ids())
        console.print(
            f"beacon group: {len(g.beacon_members)} of {len(g.members)} members ({names}); "
            f"{g.threshold} partials make a beacon"
        )

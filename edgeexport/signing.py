"""Signed artifacts: a folder signed with an elliptic-curve key, so a device can tell it is the one CI validated.

The manifest's sha256 list proves that an artifact's files match *its own* manifest; anyone who
edits a file can re-hash the manifest. A signature made with a private key that only CI holds,
checked on the device with the public key, proves that the folder is the one that was signed.

Signing and verifying use OpenSSF's ``model-signing`` library (``pip install 'edgeexport[sign]'``),
key-based and offline (no Sigstore, no network): every file of the folder, ``manifest.json`` and,
in a bundle, every component, is hashed into an in-toto statement signed into a Sigstore bundle
written as :data:`~edgeexport.artifact.SIGNATURE_NAME` (``model.sig``, model-signing's default name)
inside the folder. The signature file itself is left out of the hashing, and out of
``manifest.files``. Keys are PEM elliptic-curve keys on P-256, P-384 or P-521, e.g.::

    openssl ecparam -name prime256v1 -genkey -noout -out key.pem
    openssl ec -in key.pem -pubout -out key.pub

This module imports neither torch nor any runtime; model-signing is imported when used.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import secrets
from pathlib import Path
from types import ModuleType
from typing import Any

from edgeexport.artifact import SIGNATURE_NAME, Artifact
from edgeexport.bundle import component_folders
from edgeexport.errors import ArtifactError, MissingBackendError, OutputDirError, UsageError

__all__ = ["SIGNATURE_NAME", "is_signed", "sign", "verify"]

logger = logging.getLogger(__name__)

KEYGEN = "openssl ecparam -name prime256v1 -genkey -noout -out key.pem"
PUBKEY = "openssl ec -in key.pem -pubout -out key.pub"
# model-signing 1.1.1 reports a signature check only as exception text; these are its messages.
_KEY_MISMATCH = "Key mismatch"
_FILES_MISMATCH = "Signature mismatch"
_CHANGED = re.compile(r"Hash mismatch for \\?'(.+?)\\?': ")
_ADDED = re.compile(r"Extra files found in model \\?'.*?\\?': ([^\"'\]]+)")
_MISSING = re.compile(r"Missing files in model \\?'.*?\\?': ([^\"'\]]+)")


def is_signed(folder: str | Path) -> bool:
    """Whether ``folder`` holds a signature file."""
    return (Path(folder) / SIGNATURE_NAME).is_file()


def sign(folder: str | Path, private_key: str | Path) -> Path:
    """Sign an artifact or bundle folder with a PEM elliptic-curve private key; return the signature's path.

    The folder's manifests are checked first (a corrupt artifact is never signed). The signature
    is written beside the files and renamed into place, replacing an earlier one.

    Raises:
        ArtifactError: the folder is not an intact artifact or bundle.
        UsageError: the key cannot be read or is not an unencrypted EC private key.
        MissingBackendError: model-signing is not installed.
    """
    root = Path(folder)
    for component in component_folders(root).values():
        Artifact.open(component).verify()
    model_signing = _model_signing()
    key = Path(private_key)
    try:
        config = model_signing.signing.Config().use_elliptic_key_signer(private_key=key)
    except OSError as exc:
        raise UsageError(f"signing key {str(key)!r} cannot be read ({exc.strerror or exc}); pass a PEM private key "
                         f"made with '{KEYGEN}'") from None
    # model-signing 1.1.1 raises AttributeError for RSA and Ed25519 keys (it reads the key's curve).
    except (ValueError, TypeError, AttributeError) as exc:
        raise UsageError(f"signing key {str(key)!r} is not an unencrypted elliptic-curve (P-256, P-384, P-521) "
                         f"private key in PEM ({_first_line(exc)}); make one with '{KEYGEN}'") from None
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=[SIGNATURE_NAME])
    signature = root / SIGNATURE_NAME
    partial = root / f".{SIGNATURE_NAME}.partial-{secrets.token_hex(6)}"  # hashed before it exists
    try:
        config.set_hashing_config(hashing).sign(root, partial)
        os.replace(partial, signature)
    except ValueError as exc:  # a symlink in the folder
        raise ArtifactError(f"cannot sign {str(root)!r}: {_first_line(exc)}") from None
    except OSError as exc:  # a read-only folder or a full disk: the user's environment, not a bug
        raise OutputDirError(f"signing {str(root)!r} failed ({exc.strerror or exc}); no signature was written") from None
    finally:
        partial.unlink(missing_ok=True)
    return signature


def verify(folder: str | Path, public_key: str | Path) -> None:
    """Check that ``folder`` is exactly the folder signed with the private key of ``public_key``.

    Every file is hashed and compared with the signed list: a changed, added or removed file, a
    signature made with another key or a modified signature fails.

    Args:
        folder: An artifact or bundle folder.
        public_key: PEM elliptic-curve public key of the signer.

    Raises:
        ArtifactError: unsigned, signed with another key, or modified after signing.
        UsageError: the key cannot be read or is not an EC public key.
        MissingBackendError: model-signing is not installed.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ArtifactError(f"artifact folder {str(root)!r} does not exist; pass the folder written by "
                            "'edgeexport convert'")
    config = _verifier(Path(public_key))
    if not is_signed(root):
        raise ArtifactError(f"{str(root)!r} is not signed (it has no {SIGNATURE_NAME}); refusing it: use the "
                            f"artifact CI signed, or sign it with 'edgeexport sign {root} --key KEY'")
    from cryptography.exceptions import InvalidSignature  # a dependency of model-signing

    # model-signing prints a warning for signatures without a key hint (pre-1.0): logged instead.
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            config.verify(root, root / SIGNATURE_NAME)
    # A malformed signature file gives ValueError (JSON, schema), LookupError or TypeError.
    except (ValueError, LookupError, TypeError, OSError, InvalidSignature) as exc:
        raise _verify_error(root, Path(public_key), exc) from None
    finally:
        if printed.getvalue().strip():
            logger.warning("model-signing: %s", printed.getvalue().strip())


def _verifier(key: Path) -> Any:
    """model-signing's verifying config for an EC public key, or a one-line error about the key."""
    model_signing = _model_signing()
    try:
        return model_signing.verifying.Config().use_elliptic_key_verifier(public_key=key)
    except OSError as exc:
        raise UsageError(f"verification key {str(key)!r} cannot be read ({exc.strerror or exc}); pass the signer's "
                         f"PEM public key, made with '{PUBKEY}'") from None
    # model-signing 1.1.1 raises AttributeError for RSA and Ed25519 keys (it reads the key's curve).
    except (ValueError, TypeError, AttributeError) as exc:
        raise UsageError(f"verification key {str(key)!r} is not an elliptic-curve (P-256, P-384, P-521) public key "
                         f"in PEM ({_first_line(exc)}); make it with '{PUBKEY}'") from None


def _verify_error(root: Path, key: Path, exc: Exception) -> ArtifactError:
    """One line for a failed check, from model-signing's exception (its only report)."""
    from cryptography.exceptions import InvalidSignature

    message = str(exc)
    if message.startswith(_KEY_MISMATCH):
        return ArtifactError(f"{str(root)!r} was signed with another key than {str(key)!r}; refusing it: it is not "
                             "the artifact signed by that key's owner")
    if isinstance(exc, InvalidSignature):
        return ArtifactError(f"the signature of {str(root)!r} does not verify with {str(key)!r}; refusing it: "
                             f"{SIGNATURE_NAME} was modified or made with another key")
    if message.startswith(_FILES_MISMATCH):
        parts = [f"{kind} {', '.join(names)}" for kind, names in (
            ("changed", _CHANGED.findall(message)), ("added", _joined(_ADDED, message)),
            ("removed", _joined(_MISSING, message))) if names]
        return ArtifactError(f"{str(root)!r} does not match its signature ({'; '.join(parts) or 'files differ'}); "
                             "refusing it: it was modified after signing")
    return ArtifactError(f"{SIGNATURE_NAME} of {str(root)!r} cannot be checked ({_first_line(exc)}); refusing it: "
                         "re-sign the artifact")


def _joined(pattern: re.Pattern[str], message: str) -> list[str]:
    return [name for group in pattern.findall(message) for name in group.split(", ")]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _model_signing() -> ModuleType:
    try:
        import model_signing
    # model-signing 1.1.1 imports pyOpenSSL without declaring it: the extra installs both.
    except ImportError as exc:
        raise MissingBackendError(f"signing needs model-signing ({exc}); pip install 'edgeexport[sign]' (on a "
                                  "device: pip install model-signing==1.1.1 pyopenssl)") from None
    return model_signing

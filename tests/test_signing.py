"""Signed artifacts: sign with an EC private key, verify with its public key, one exact line per refusal."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("model_signing", reason="pip install 'edgeexport[sign]'")

from cryptography.hazmat.primitives import serialization  # noqa: E402 - model-signing's dependency
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

import edgeexport  # noqa: E402
from edgeexport.artifact import SIGNATURE_NAME, Artifact, write_manifest  # noqa: E402
from edgeexport.bundle import write_bundle  # noqa: E402
from edgeexport.cli import app  # noqa: E402
from edgeexport.conversion import ConversionResult  # noqa: E402
from edgeexport.errors import ArtifactError, MissingBackendError  # noqa: E402
from edgeexport.signing import sign, verify  # noqa: E402


def run_cli(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def assert_one_line(code: int, out: str, err: str, expected: str) -> None:
    assert code == 2, err
    assert "Traceback" not in out + err
    assert err.strip().splitlines() == [expected]


def make_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """An EC P-256 key pair in the PEM forms openssl writes (``ecparam -genkey -noout``, ``ec -pubout``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("keys")
    return {name: make_keys(folder, name) for name in ("ci", "other")}


def rehash_manifest(folder: Path) -> None:
    """What an attacker does after editing a file: re-hash the manifest so its own check passes."""
    manifest_path = folder / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["files"] = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in data["files"]}
    manifest_path.write_text(json.dumps(data, indent=2) + "\n")
    Artifact.open(folder).verify()  # the manifest check alone is fooled


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_sign_then_validate_verify(artifact_copy: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    private, public = keys["ci"]
    manifest_before = (artifact_copy / "manifest.json").read_bytes()
    code, _, err = run_cli("sign", artifact_copy, "--key", private)
    assert code == 0, err
    assert err.strip() == f"wrote {artifact_copy / SIGNATURE_NAME} (signed with {private})"
    assert (artifact_copy / "manifest.json").read_bytes() == manifest_before
    assert sorted(p.name for p in artifact_copy.iterdir()) == ["golden", "manifest.json", "model.onnx", SIGNATURE_NAME,
                                                                "tokenizer"]
    Artifact.open(artifact_copy).verify()  # the manifest check ignores the signature file
    code, out, err = run_cli("validate", artifact_copy, "--verify", public, "--json")
    assert code == 0, err
    assert err.strip().splitlines() == [f"signature of {artifact_copy} verified with {public}",
                                        f"PASS: 2 cases x 1 output of {artifact_copy} within bounds (onnx fp32 on "
                                        "onnxruntime)"]
    assert json.loads(out)["passed"] is True


def test_signature_file_is_never_listed_in_the_manifest(artifact_copy: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    sign(artifact_copy, keys["ci"][0])
    manifest = write_manifest(artifact_copy, Artifact.open(artifact_copy).manifest)  # e.g. edgeexport build re-hashing
    assert SIGNATURE_NAME not in manifest.files and "model.onnx" in manifest.files


@pytest.mark.parametrize("tampered", ["model.onnx", "golden/example_outputs.bin"])
def test_tampered_file_with_rehashed_manifest_is_refused(artifact_copy: Path, keys: dict[str, tuple[Path, Path]],
                                                         tampered: str) -> None:
    private, public = keys["ci"]
    sign(artifact_copy, private)
    flip_byte(artifact_copy / tampered)
    rehash_manifest(artifact_copy)
    changed = ", ".join(sorted(["manifest.json", tampered]))
    assert_one_line(*run_cli("validate", artifact_copy, "--verify", public),
                    f"error: '{artifact_copy}' does not match its signature (changed {changed}); refusing it: it was "
                    "modified after signing")


def test_added_and_removed_files_are_refused(artifact_copy: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    sign(artifact_copy, keys["ci"][0])
    (artifact_copy / "golden" / "extra.bin").write_bytes(b"not signed")
    (artifact_copy / "golden" / "alternate_inputs.bin").unlink()
    with pytest.raises(ArtifactError) as error:
        verify(artifact_copy, keys["ci"][1])
    assert str(error.value) == (f"'{artifact_copy}' does not match its signature (added golden/extra.bin; removed "
                                "golden/alternate_inputs.bin); refusing it: it was modified after signing")


def test_resigned_with_another_key_is_refused(artifact_copy: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    sign(artifact_copy, keys["ci"][0])
    flip_byte(artifact_copy / "model.onnx")
    rehash_manifest(artifact_copy)
    sign(artifact_copy, keys["other"][0])
    verify(artifact_copy, keys["other"][1])
    public = keys["ci"][1]
    assert_one_line(*run_cli("validate", artifact_copy, "--verify", public),
                    f"error: '{artifact_copy}' was signed with another key than '{public}'; refusing it: it is not "
                    "the artifact signed by that key's owner")


def test_resigned_with_a_forged_key_hint_is_refused(artifact_copy: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    """The signature names its key by a hash: copying the CI key's hash into another key's signature fails."""
    signature = artifact_copy / SIGNATURE_NAME
    sign(artifact_copy, keys["ci"][0])
    hint = json.loads(signature.read_text())["verificationMaterial"]["publicKey"]["hint"]
    sign(artifact_copy, keys["other"][0])
    forged = json.loads(signature.read_text())
    forged["verificationMaterial"]["publicKey"]["hint"] = hint
    signature.write_text(json.dumps(forged))
    public = keys["ci"][1]
    assert_one_line(*run_cli("validate", artifact_copy, "--verify", public),
                    f"error: the signature of '{artifact_copy}' does not verify with '{public}'; refusing it: "
                    f"{SIGNATURE_NAME} was modified or made with another key")


def test_corrupt_signature_file_is_refused(artifact_copy: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    (artifact_copy / SIGNATURE_NAME).write_text("{}")
    assert_one_line(*run_cli("validate", artifact_copy, "--verify", keys["ci"][1]),
                    f"error: {SIGNATURE_NAME} of '{artifact_copy}' cannot be checked ('verificationMaterial'); "
                    "refusing it: re-sign the artifact")


def test_unsigned_artifact(bert_artifact: ConversionResult, keys: dict[str, tuple[Path, Path]]) -> None:
    folder, public = bert_artifact.artifact, keys["ci"][1]
    assert_one_line(*run_cli("validate", folder, "--verify", public),
                    f"error: '{folder}' is not signed (it has no {SIGNATURE_NAME}); refusing it: use the artifact CI "
                    f"signed, or sign it with 'edgeexport sign {folder} --key KEY'")
    code, _, err = run_cli("validate", folder, "--json")  # without --verify nothing asks for a signature
    assert code == 0, err


def test_bad_keys(artifact_copy: Path, keys: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    assert_one_line(*run_cli("sign", artifact_copy, "--key", missing),
                    f"error: signing key '{missing}' cannot be read (No such file or directory); pass a PEM private "
                    "key made with 'openssl ecparam -name prime256v1 -genkey -noout -out key.pem'")
    assert_one_line(*run_cli("validate", artifact_copy, "--verify", missing),
                    f"error: verification key '{missing}' cannot be read (No such file or directory); pass the "
                    "signer's PEM public key, made with 'openssl ec -in key.pem -pubout -out key.pub'")
    private, public = keys["ci"]
    assert_one_line(*run_cli("validate", artifact_copy, "--verify", private),
                    f"error: verification key '{private}' is not an elliptic-curve (P-256, P-384, P-521) public key "
                    "in PEM (Valid PEM but no BEGIN PUBLIC KEY/END PUBLIC KEY delimiters. Are you sure this is a "
                    "public key?); make it with 'openssl ec -in key.pem -pubout -out key.pub'")
    assert_one_line(*run_cli("sign", artifact_copy, "--key", public),
                    f"error: signing key '{public}' is not an unencrypted elliptic-curve (P-256, P-384, P-521) "
                    "private key in PEM (Valid PEM but no BEGIN/END delimiters for a private key found. Are you sure "
                    "this is a private key?); make one with 'openssl ecparam -name prime256v1 -genkey -noout -out "
                    "key.pem'")
    assert not (artifact_copy / SIGNATURE_NAME).exists()


def test_corrupt_artifact_is_not_signed(artifact_copy: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    flip_byte(artifact_copy / "model.onnx")
    assert_one_line(*run_cli("sign", artifact_copy, "--key", keys["ci"][0]),
                    "error: artifact file 'model.onnx' does not match its sha256 in the manifest; it was modified or "
                    "corrupted")
    assert not (artifact_copy / SIGNATURE_NAME).exists()


def test_signed_bundle_covers_its_components(bert_artifact: ConversionResult, keys: dict[str, tuple[Path, Path]],
                                             tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    for role in ("encoder", "decoder"):
        shutil.copytree(bert_artifact.artifact, bundle / role)
    write_bundle(bundle, ["encoder", "decoder"], {"name": "bert"})
    private, public = keys["ci"]
    assert sign(bundle, private) == bundle / SIGNATURE_NAME
    verify(bundle, public)
    flip_byte(bundle / "decoder" / "model.onnx")
    rehash_manifest(bundle / "decoder")
    write_bundle(bundle, ["encoder", "decoder"], {"name": "bert"})  # and the bundle's pin of that manifest
    with pytest.raises(ArtifactError) as error:
        verify(bundle, public)
    assert str(error.value) == (f"'{bundle}' does not match its signature (changed bundle.json, decoder/manifest.json, "
                                "decoder/model.onnx); refusing it: it was modified after signing")


def test_load_verifies_the_signature(artifact_copy: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    private, public = keys["ci"]
    sign(artifact_copy, private)
    with edgeexport.load(artifact_copy, verify_signature=public) as runner:
        inputs, outputs = runner.artifact.load_golden(runner.artifact.manifest.golden[0])
        np.testing.assert_allclose(runner(inputs)["logits"], outputs["logits"], atol=1e-4, rtol=1e-3)
    with pytest.raises(ArtifactError, match="was signed with another key"):
        edgeexport.load(artifact_copy, verify_signature=keys["other"][1])


def test_openssl_keys_from_the_readme(artifact_copy: Path, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "key.pem"], cwd=tmp_path,
                   check=True, capture_output=True)
    subprocess.run(["openssl", "ec", "-in", "key.pem", "-pubout", "-out", "key.pub"], cwd=tmp_path, check=True,
                   capture_output=True)
    sign(artifact_copy, tmp_path / "key.pem")
    verify(artifact_copy, tmp_path / "key.pub")


def test_missing_model_signing_is_one_line(artifact_copy: Path, keys: dict[str, tuple[Path, Path]],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "model_signing", None)
    with pytest.raises(MissingBackendError) as error:
        verify(artifact_copy, keys["ci"][1])
    assert str(error.value) == ("signing needs model-signing (import of model_signing halted; None in sys.modules); "
                                "pip install 'edgeexport[sign]' (on a device: pip install model-signing==1.1.1 "
                                "pyopenssl)")

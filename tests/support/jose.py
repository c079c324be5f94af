"""JOSE for capgate's workload-identity tests, made by PyJWT (a third-party library), so that
what capgate verifies was not produced by capgate's own code.

    jose.py keygen ALG KID DIR        write DIR/KID.pem (private) and print the public JWK
    jose.py jwks OUT JWK...           write a JWKS of the given public JWK files
    jose.py jwt PEM ALG KID CLAIMS [HEADERS]
                                      sign CLAIMS (JSON); HEADERS (JSON) are extra header fields
    jose.py hs256 SECRET CLAIMS [KID] sign with HMAC (for the algorithm-confusion test)
    jose.py none CLAIMS               an unsigned `alg: none` token
    jose.py dpop PEM ALG HTM HTU [--ath TOKEN] [--jti J] [--iat T]
                                      a DPoP proof (RFC 9449) whose header carries the public key
    jose.py thumbprint PEM ALG        the RFC 7638 SHA-256 thumbprint of PEM's public key
"""

import base64
import hashlib
import json
import sys
import time
import uuid

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load(pem_path):
    with open(pem_path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def public_jwk(key, alg):
    pub = key.public_key()
    if alg.startswith("ES"):
        jwk = json.loads(ECAlgorithm.to_jwk(pub))
    elif alg == "EdDSA":
        jwk = json.loads(OKPAlgorithm.to_jwk(pub))
    else:
        jwk = json.loads(RSAAlgorithm.to_jwk(pub))
    return jwk


def new_key(alg):
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def main(argv):
    cmd = argv[0]
    if cmd == "keygen":
        alg, kid, out = argv[1], argv[2], argv[3]
        key = new_key(alg)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with open(f"{out}/{kid}.pem", "wb") as f:
            f.write(pem)
        jwk = public_jwk(key, alg)
        jwk.update({"kid": kid, "alg": alg, "use": "sig"})
        print(json.dumps(jwk))
    elif cmd == "jwks":
        keys = []
        for path in argv[2:]:
            with open(path) as f:
                keys.append(json.load(f))
        with open(argv[1], "w") as f:
            json.dump({"keys": keys}, f)
    elif cmd == "jwt":
        pem, alg, kid, claims = argv[1], argv[2], argv[3], json.loads(argv[4])
        headers = {"kid": kid}
        if len(argv) > 5:
            headers.update(json.loads(argv[5]))
        print(jwt.encode(claims, load(pem), algorithm=alg, headers=headers))
    elif cmd == "hs256":
        secret, claims = argv[1].encode(), json.loads(argv[2])
        headers = {"kid": argv[3]} if len(argv) > 3 else None
        # PyJWT refuses an HMAC secret that looks like a public key: sign by hand, as an
        # attacker would.
        header = {"alg": "HS256", "typ": "JWT"}
        if headers:
            header.update(headers)
        signing = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
        import hmac

        sig = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
        print(signing + "." + b64url(sig))
    elif cmd == "none":
        claims = json.loads(argv[1])
        print(jwt.encode(claims, None, algorithm="none"))
    elif cmd == "dpop":
        pem, alg, htm, htu = argv[1], argv[2], argv[3], argv[4]
        rest = argv[5:]
        opts = dict(zip(rest[::2], rest[1::2]))
        key = load(pem)
        claims = {
            "jti": opts.get("--jti", str(uuid.uuid4())),
            "htm": htm,
            "htu": htu,
            "iat": int(opts.get("--iat", int(time.time()))),
        }
        if "--ath" in opts:
            claims["ath"] = b64url(hashlib.sha256(opts["--ath"].encode()).digest())
        headers = {"typ": "dpop+jwt", "jwk": public_jwk(key, alg)}
        print(jwt.encode(claims, key, algorithm=alg, headers=headers))
    elif cmd == "thumbprint":
        jwk = public_jwk(load(argv[1]), argv[2])
        if jwk["kty"] == "EC":
            members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
        elif jwk["kty"] == "OKP":
            members = {k: jwk[k] for k in ("crv", "kty", "x")}
        else:
            members = {k: jwk[k] for k in ("e", "kty", "n")}
        canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
        print(b64url(hashlib.sha256(canonical.encode()).digest()))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])

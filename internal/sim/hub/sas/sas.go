// Package sas parses, verifies and creates IoT Hub shared access signature
// (SAS) tokens of the form
//
//	SharedAccessSignature sr={resource}&sig={signature}&se={expiry}[&skn={policy}]
//
// The signature is the base64 HMAC-SHA256, keyed with the base64-decoded
// shared access key, of "{sr}\n{se}" where sr and se are the strings exactly as
// they appear in the token. Signers differ in how they encode the resource
// (the Go SDK URL-encodes it, others do not, some include the port), so a
// verifier must hash the resource as received rather than re-encoding it.
package sas

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Prefix starts every token.
const Prefix = "SharedAccessSignature "

var (
	// ErrMalformed reports a token that cannot be parsed.
	ErrMalformed = errors.New("malformed shared access signature")
	// ErrExpired reports a token whose expiry is in the past.
	ErrExpired = errors.New("shared access signature expired")
	// ErrSignature reports a signature that does not match the key.
	ErrSignature = errors.New("shared access signature does not match the key")
)

// maxTokenLen bounds the work done on hostile input; real tokens are a few
// hundred bytes.
const maxTokenLen = 4096

// Token is a parsed shared access signature.
type Token struct {
	// Resource is the sr field exactly as it appears in the token, still
	// URL-encoded if the signer encoded it: the signature covers this form.
	Resource string
	// Signature is the URL-decoded sig field (base64 text).
	Signature string
	// Expiry is the se field.
	Expiry time.Time
	// KeyName is the URL-decoded skn field; empty for device tokens.
	KeyName string

	rawExpiry string // se as received, part of the signed string
}

// Parse parses a token string. It checks the syntax only; use Verify for the
// signature and the expiry.
func Parse(s string) (Token, error) {
	if len(s) > maxTokenLen {
		return Token{}, fmt.Errorf("%w: longer than %d bytes", ErrMalformed, maxTokenLen)
	}
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), Prefix)
	if !ok {
		return Token{}, fmt.Errorf("%w: missing %q prefix", ErrMalformed, strings.TrimSpace(Prefix))
	}
	var t Token
	seen := map[string]bool{}
	for _, field := range strings.Split(rest, "&") {
		k, v, ok := strings.Cut(field, "=")
		if !ok || k == "" {
			// The field is not quoted: it may be signature material.
			return Token{}, fmt.Errorf("%w: a field is not key=value", ErrMalformed)
		}
		if seen[k] {
			return Token{}, fmt.Errorf("%w: duplicate field %q", ErrMalformed, k)
		}
		seen[k] = true
		switch k {
		case "sr":
			if v == "" {
				return Token{}, fmt.Errorf("%w: empty sr", ErrMalformed)
			}
			if _, err := url.QueryUnescape(v); err != nil {
				return Token{}, fmt.Errorf("%w: sr is not URL-encoded", ErrMalformed)
			}
			t.Resource = v
		case "sig":
			// PathUnescape keeps a literal '+' of unencoded base64 intact,
			// where QueryUnescape would turn it into a space.
			sig, err := url.PathUnescape(v)
			if err != nil {
				return Token{}, fmt.Errorf("%w: sig is not URL-encoded", ErrMalformed)
			}
			raw, err := base64.StdEncoding.DecodeString(sig)
			if err != nil || len(raw) != sha256.Size {
				return Token{}, fmt.Errorf("%w: sig is not a base64 HMAC-SHA256", ErrMalformed)
			}
			t.Signature = sig
		case "se":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 || n > maxUnix {
				return Token{}, fmt.Errorf("%w: se is not a unix time", ErrMalformed)
			}
			t.Expiry = time.Unix(n, 0).UTC()
			t.rawExpiry = v
		case "skn":
			name, err := url.PathUnescape(v)
			if err != nil {
				return Token{}, fmt.Errorf("%w: skn is not URL-encoded", ErrMalformed)
			}
			t.KeyName = name
		default:
			// Unknown fields are refused rather than ignored: they are not
			// covered by the signature, so accepting them would let anyone
			// append data to a valid token.
			return Token{}, fmt.Errorf("%w: unknown field %q", ErrMalformed, truncate(k))
		}
	}
	for _, k := range []string{"sr", "sig", "se"} {
		if !seen[k] {
			return Token{}, fmt.Errorf("%w: missing %s", ErrMalformed, k)
		}
	}
	return t, nil
}

// maxUnix keeps expiries inside the range time.Time handles comfortably
// (year 9999).
const maxUnix = 253402300799

// ResourceURI returns the URL-decoded resource, e.g. "myhub.example/devices/d1".
func (t Token) ResourceURI() string {
	s, err := url.QueryUnescape(t.Resource)
	if err != nil {
		return t.Resource // Parse already refused undecodable resources
	}
	return s
}

// Verify checks that the token is signed with key (raw bytes, already
// base64-decoded) and has not expired at now.
func (t Token) Verify(key []byte, now time.Time) error {
	want, err := base64.StdEncoding.DecodeString(t.Signature)
	if err != nil {
		return fmt.Errorf("%w: sig is not base64", ErrMalformed)
	}
	if !hmac.Equal(want, mac(key, t.Resource, t.expiryString())) {
		return ErrSignature
	}
	if !now.Before(t.Expiry) {
		return ErrExpired
	}
	return nil
}

// VerifyAny is Verify with several candidate keys (a device's primary and
// secondary key); it succeeds if any key matches.
func (t Token) VerifyAny(keys [][]byte, now time.Time) error {
	err := ErrSignature
	for _, k := range keys {
		if len(k) == 0 {
			continue
		}
		if err = t.Verify(k, now); err == nil || !errors.Is(err, ErrSignature) {
			return err
		}
	}
	return err
}

func (t Token) expiryString() string {
	if t.rawExpiry != "" {
		return t.rawExpiry
	}
	return strconv.FormatInt(t.Expiry.Unix(), 10)
}

// Sign returns a token for resource (the decoded form, e.g. "host:8443"),
// signed with key (raw bytes), valid until expiry. The resource is
// URL-encoded the way the Go SDK encodes it, and the signature covers the
// encoded form. keyName is the policy name; leave it empty for device tokens.
func Sign(resource string, key []byte, expiry time.Time, keyName string) string {
	sr := url.QueryEscape(resource)
	se := strconv.FormatInt(expiry.Unix(), 10)
	sig := base64.StdEncoding.EncodeToString(mac(key, sr, se))
	s := Prefix + "sr=" + sr + "&sig=" + url.QueryEscape(sig) + "&se=" + se
	if keyName != "" {
		s += "&skn=" + url.QueryEscape(keyName)
	}
	return s
}

// DecodeKey decodes a base64 shared access key.
func DecodeKey(key string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(key)
	if err != nil {
		return nil, fmt.Errorf("shared access key is not base64: %w", err)
	}
	return b, nil
}

func mac(key []byte, sr, se string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(sr + "\n" + se))
	return h.Sum(nil)
}

func truncate(s string) string {
	if len(s) > 32 {
		return s[:32] + "…"
	}
	return s
}

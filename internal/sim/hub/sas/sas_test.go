package sas

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/common"
)

var (
	keyA    = []byte("0123456789abcdef0123456789abcdef")
	keyB    = []byte("fedcba9876543210fedcba9876543210")
	keyAB64 = base64.StdEncoding.EncodeToString(keyA)
	now     = time.Unix(1_700_000_000, 0)
	later   = now.Add(time.Hour)
)

// signRaw builds a token the way other SDKs do: the resource is used (and
// signed) exactly as given, without the Go SDK's URL-encoding.
func signRaw(sr string, key []byte, se int64, extra string) string {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(sr + "\n" + strconv.FormatInt(se, 10)))
	sig := base64.StdEncoding.EncodeToString(h.Sum(nil))
	return Prefix + "sr=" + sr + "&sig=" + url.QueryEscape(sig) + "&se=" + strconv.FormatInt(se, 10) + extra
}

func TestParse(t *testing.T) {
	goodSig := url.QueryEscape(base64.StdEncoding.EncodeToString(make([]byte, 32)))
	tests := []struct {
		name     string
		token    string
		wantErr  bool
		resource string // decoded
		keyName  string
		expiry   int64
	}{
		{name: "go sdk service token", token: Sign("localhost:8443", keyA, later, "iothubowner"),
			resource: "localhost:8443", keyName: "iothubowner", expiry: later.Unix()},
		{name: "go sdk device token", token: Sign("localhost", keyA, later, ""),
			resource: "localhost", expiry: later.Unix()},
		{name: "unencoded resource with device path", token: signRaw("myhub.example/devices/d1", keyA, 42, ""),
			resource: "myhub.example/devices/d1", expiry: 42},
		{name: "field order free", token: Prefix + "se=7&skn=p&sig=" + goodSig + "&sr=h",
			resource: "h", keyName: "p", expiry: 7},
		{name: "surrounding space", token: "  " + Prefix + "sr=h&sig=" + goodSig + "&se=1 ", resource: "h", expiry: 1},
		{name: "empty", token: "", wantErr: true},
		{name: "no prefix", token: "sr=h&sig=" + goodSig + "&se=1", wantErr: true},
		{name: "lower-case prefix", token: "sharedaccesssignature sr=h&sig=" + goodSig + "&se=1", wantErr: true},
		{name: "missing sr", token: Prefix + "sig=" + goodSig + "&se=1", wantErr: true},
		{name: "missing sig", token: Prefix + "sr=h&se=1", wantErr: true},
		{name: "missing se", token: Prefix + "sr=h&sig=" + goodSig, wantErr: true},
		{name: "empty sr", token: Prefix + "sr=&sig=" + goodSig + "&se=1", wantErr: true},
		{name: "duplicate sr", token: Prefix + "sr=h&sr=h&sig=" + goodSig + "&se=1", wantErr: true},
		{name: "unknown field", token: Prefix + "sr=h&sig=" + goodSig + "&se=1&x=y", wantErr: true},
		{name: "field without equals", token: Prefix + "sr=h&sig=" + goodSig + "&se=1&junk", wantErr: true},
		{name: "sig not base64", token: Prefix + "sr=h&sig=%%%&se=1", wantErr: true},
		{name: "sig wrong length", token: Prefix + "sr=h&sig=" + url.QueryEscape(base64.StdEncoding.EncodeToString([]byte("short"))) + "&se=1", wantErr: true},
		{name: "se not a number", token: Prefix + "sr=h&sig=" + goodSig + "&se=soon", wantErr: true},
		{name: "se negative", token: Prefix + "sr=h&sig=" + goodSig + "&se=-1", wantErr: true},
		{name: "se beyond year 9999", token: Prefix + "sr=h&sig=" + goodSig + "&se=999999999999", wantErr: true},
		{name: "sr bad escape", token: Prefix + "sr=%zz&sig=" + goodSig + "&se=1", wantErr: true},
		{name: "too long", token: Prefix + "sr=" + strings.Repeat("a", maxTokenLen) + "&sig=" + goodSig + "&se=1", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := Parse(tc.token)
			if tc.wantErr {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("Parse error = %v, want ErrMalformed", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got := tok.ResourceURI(); got != tc.resource {
				t.Errorf("ResourceURI = %q, want %q", got, tc.resource)
			}
			if tok.KeyName != tc.keyName {
				t.Errorf("KeyName = %q, want %q", tok.KeyName, tc.keyName)
			}
			if tok.Expiry.Unix() != tc.expiry {
				t.Errorf("Expiry = %d, want %d", tok.Expiry.Unix(), tc.expiry)
			}
		})
	}
}

func TestVerify(t *testing.T) {
	past := now.Add(-time.Second)
	tests := []struct {
		name  string
		token string
		keys  [][]byte
		want  error
	}{
		{name: "go sdk token", token: Sign("localhost:8443", keyA, later, "iothubowner"), keys: [][]byte{keyA}},
		{name: "raw resource token", token: signRaw("localhost/devices/d%2B1", keyA, later.Unix(), ""), keys: [][]byte{keyA}},
		{name: "secondary key matches", token: Sign("h", keyB, later, ""), keys: [][]byte{keyA, keyB}},
		{name: "wrong key", token: Sign("h", keyB, later, ""), keys: [][]byte{keyA}, want: ErrSignature},
		{name: "no keys", token: Sign("h", keyA, later, ""), keys: nil, want: ErrSignature},
		{name: "expired", token: Sign("h", keyA, past, ""), keys: [][]byte{keyA}, want: ErrExpired},
		{name: "expires now", token: Sign("h", keyA, now, ""), keys: [][]byte{keyA}, want: ErrExpired},
		{name: "expired and wrong key reports the signature", token: Sign("h", keyB, past, ""), keys: [][]byte{keyA}, want: ErrSignature},
		{name: "resource re-encoded by attacker", token: strings.Replace(Sign("h:1", keyA, later, ""), "h%3A1", "h:1", 1), keys: [][]byte{keyA}, want: ErrSignature},
		{name: "expiry extended by attacker", token: strings.Replace(Sign("h", keyA, later, ""), strconv.FormatInt(later.Unix(), 10), strconv.FormatInt(later.Unix()+1, 10), 1), keys: [][]byte{keyA}, want: ErrSignature},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := Parse(tc.token)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			err = tok.VerifyAny(tc.keys, now)
			if tc.want == nil && err != nil {
				t.Fatalf("VerifyAny: %v", err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("VerifyAny error = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestGoSDKTokens checks tokens made by the unchanged amenzhinsky signer, the
// client localhub must accept.
func TestGoSDKTokens(t *testing.T) {
	for _, resource := range []string{"localhost", "localhost:8443", "myhub.example/devices/dev+1"} {
		t.Run(resource, func(t *testing.T) {
			s, err := common.NewSharedAccessSignature(resource, "iothubowner", keyAB64, later)
			if err != nil {
				t.Fatal(err)
			}
			tok, err := Parse(s.String())
			if err != nil {
				t.Fatalf("Parse(%q): %v", s.String(), err)
			}
			if got := tok.ResourceURI(); got != resource {
				t.Errorf("ResourceURI = %q, want %q", got, resource)
			}
			if err := tok.Verify(keyA, now); err != nil {
				t.Errorf("Verify: %v", err)
			}
			if mine := Sign(resource, keyA, later, "iothubowner"); mine != s.String() {
				t.Errorf("Sign = %q, SDK = %q", mine, s.String())
			}
		})
	}
}

func TestDecodeKey(t *testing.T) {
	if _, err := DecodeKey("not base64!"); err == nil {
		t.Error("DecodeKey accepted invalid base64")
	}
	b, err := DecodeKey(keyAB64)
	if err != nil || string(b) != string(keyA) {
		t.Errorf("DecodeKey = %q, %v", b, err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(Sign("localhost:8443", keyA, later, "iothubowner"))
	f.Add(signRaw("h/devices/d", keyA, 5, ""))
	f.Add(Prefix + "sr=&sig=&se=")
	f.Add(Prefix + "sr=h&sig=AAAA&se=1&skn=%zz")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Parse error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if tok.Resource == "" || tok.Signature == "" {
			t.Fatalf("Parse accepted %q with empty fields: %+v", s, tok)
		}
		// A parsed token must verify without panicking, and a token
		// re-signed from its parts must parse back to the same resource.
		_ = tok.Verify(keyA, now)
		resigned := Sign(tok.ResourceURI(), keyA, tok.Expiry, tok.KeyName)
		if len(resigned) > maxTokenLen {
			// Sign escapes what the token may carry raw (bytes above 0x7f): a token near the
			// length limit can outgrow it when re-signed, and is then rightly refused.
			return
		}
		again, err := Parse(resigned)
		if err != nil {
			t.Fatalf("re-signed token does not parse: %v", err)
		}
		if again.ResourceURI() != tok.ResourceURI() {
			t.Fatalf("resource %q became %q", tok.ResourceURI(), again.ResourceURI())
		}
	})
}

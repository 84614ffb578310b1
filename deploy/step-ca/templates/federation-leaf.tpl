{{- /*
  Mosaic federation leaf certificate (step-ca X.509 template, JWK provisioner).

  Every value comes from the SIGNED one-time token (.Token = the verified JWT
  payload), never from .Insecure (CSR / user templateData):
    subject CN                       = .Token.mosaic.peer_name (the peer's registered name;
                                       .Token.sub is the CSR's CN, which step-ca requires)
    subjectAltName URI               = urn:mosaic:federation:peer:<.Token.mosaic.peer_id>
    1.3.6.1.4.1.99999.1 (non-crit.)  = UTF8String(.Token.mosaic.grant_id)
    1.3.6.1.4.1.99999.2 (non-crit.)  = UTF8String(.Token.mosaic.subject_user_id)
  keyUsage digitalSignature, extKeyUsage clientAuth, CA:FALSE. The SAN URI is the one
  the broker's local profile writes (ca_broker.profile.peer_uri); the broker's chain
  verifier (cryptography's client verifier) requires a SAN in the leaf.

  All three ids must be canonical lowercase UUIDs (36 chars); anything else makes
  the template `fail`, so step-ca answers 400 and no certificate is issued.
  The extension value is base64(DER UTF8String) = base64(0x0C 0x24 || uuid),
  built by hand because step-ca 0.19's template functions (sprig + fail)
  have no asn1 helpers.
*/ -}}
{{- $uuidRe := "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$" -}}
{{- $m := dict -}}
{{- if hasKey .Token "mosaic" }}{{ $m = .Token.mosaic }}{{ end -}}
{{- if not (kindIs "map" $m) }}{{ fail "mosaic: token claim 'mosaic' must be an object" }}{{ end -}}
{{- $gid := get $m "grant_id" -}}
{{- $uid := get $m "subject_user_id" -}}
{{- $pid := get $m "peer_id" -}}
{{- $name := get $m "peer_name" -}}
{{- if not (kindIs "string" $name) }}{{ fail "mosaic: mosaic.peer_name must be a string" }}{{ end -}}
{{- if not (regexMatch "^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$" $name) }}{{ fail "mosaic: mosaic.peer_name must be a plain name" }}{{ end -}}
{{- if not (kindIs "string" $gid) }}{{ fail "mosaic: mosaic.grant_id must be a string" }}{{ end -}}
{{- if not (regexMatch $uuidRe $gid) }}{{ fail "mosaic: mosaic.grant_id must be a canonical lowercase UUID" }}{{ end -}}
{{- if not (kindIs "string" $uid) }}{{ fail "mosaic: mosaic.subject_user_id must be a string" }}{{ end -}}
{{- if not (regexMatch $uuidRe $uid) }}{{ fail "mosaic: mosaic.subject_user_id must be a canonical lowercase UUID" }}{{ end -}}
{{- if not (kindIs "string" $pid) }}{{ fail "mosaic: mosaic.peer_id must be a string" }}{{ end -}}
{{- if not (regexMatch $uuidRe $pid) }}{{ fail "mosaic: mosaic.peer_id must be a canonical lowercase UUID" }}{{ end -}}
{
	"subject": {"commonName": {{ toJson $name }}},
	"uris": [{{ printf "urn:mosaic:federation:peer:%s" $pid | toJson }}],
	"keyUsage": ["digitalSignature"],
	"extKeyUsage": ["clientAuth"],
	"basicConstraints": {"isCA": false},
	"extensions": [
		{"id": "1.3.6.1.4.1.99999.1", "critical": false, "value": {{ printf "\x0c\x24%s" $gid | b64enc | toJson }}},
		{"id": "1.3.6.1.4.1.99999.2", "critical": false, "value": {{ printf "\x0c\x24%s" $uid | b64enc | toJson }}}
	]
}

// Command mosaic-step-ca-init initialises a step-ca v0.19 certificate
// authority with the library's `pki` package (the same code path `step ca
// init` uses): root + intermediate CA (ECDSA P-256, keys PEM-encrypted with the
// password), one JWK provisioner per requested name whose private key is stored
// in ca.json as `encryptedKey` (JWE compact, PBES2-HS256+A128KW / A256GCM,
// p2c=100000), and a ca.json whose JWK provisioners render leaves through an
// X.509 template file (`options.x509.templateFile`).
//
// Besides the encrypted form, each provisioner's private JWK is written as
// plain JSON (mode 0600) to <dir>/secrets/provisioner_key.json (main
// provisioner) or <dir>/secrets/provisioner_key.<name>.json (extra ones).
//
// A machine-readable summary (host paths, CA URL, root fingerprint,
// provisioner names/kids/key files) is written to <dir>/config/mosaic.json and
// printed on stdout.
//
// Usage:
//
//	mosaic-step-ca-init --dir /tmp/ca --name "Mosaic Test CA" \
//	    --address 127.0.0.5:9443 --provisioner mosaic-federation \
//	    --password-file /tmp/ca-password \
//	    --template deploy/step-ca/templates/federation-leaf.tpl \
//	    [--dns 127.0.0.5,localhost] [--db badgerv2|bbolt|none] \
//	    [--extra-provisioner NAME=TEMPLATE_FILE ...] \
//	    [--default-tls-dur 24h --max-tls-dur 24h --min-tls-dur 5m] \
//	    [--disable-renewal] [--config-root /home/step] [--force]
//
// The `pki` package resolves every path from $STEPPATH, which go.step.sm's
// step package reads once at process start; this program therefore re-executes
// itself with STEPPATH=<dir> when needed.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/cas/apiv1"
	"github.com/smallstep/certificates/db"
	"github.com/smallstep/certificates/pki"
	"go.step.sm/cli-utils/step"
	"go.step.sm/crypto/jose"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

type provSummary struct {
	Name         string `json:"name"`
	Kid          string `json:"kid"`
	KeyFile      string `json:"key_file"`
	TemplateFile string `json:"template_file"`
}

type summary struct {
	CAURL           string        `json:"ca_url"`
	Address         string        `json:"address"`
	DNSNames        []string      `json:"dns_names"`
	CAConfig        string        `json:"ca_config"`
	Root            string        `json:"root"`
	RootFingerprint string        `json:"root_fingerprint"`
	Intermediate    string        `json:"intermediate"`
	PasswordFile    string        `json:"password_file"`
	DBType          string        `json:"db_type"`
	Provisioners    []provSummary `json:"provisioners"`
}

func die(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "mosaic-step-ca-init: "+format+"\n", a...)
	os.Exit(1)
}

func main() {
	var (
		dir, name, address, dns, provName, passFile, tmpl, dbType string
		minDur, maxDur, defDur                                    string
		configRoot                                                string
		force, disableRenewal                                     bool
		extras                                                    multiFlag
	)
	flag.StringVar(&dir, "dir", "", "output directory (becomes STEPPATH: certs/, secrets/, config/, templates/, db/)")
	flag.StringVar(&name, "name", "Mosaic Test CA", "CA name (root CN = NAME+\" Root CA\", intermediate CN = NAME+\" Intermediate CA\")")
	flag.StringVar(&address, "address", "127.0.0.1:9443", "listen address host:port written to ca.json")
	flag.StringVar(&dns, "dns", "", "comma-separated DNS names / IPs for the CA's TLS certificate (default: host of --address)")
	flag.StringVar(&provName, "provisioner", "mosaic-federation", "name of the main JWK provisioner (the OTT `iss`)")
	flag.StringVar(&passFile, "password-file", "", "file holding the password for the CA keys and provisioner JWE (required)")
	flag.StringVar(&tmpl, "template", "", "X.509 template file for the main provisioner (required); copied to <dir>/templates/x509/")
	flag.StringVar(&dbType, "db", "badgerv2", "database: badgerv2 (step ca init default; <dir>/db), bbolt (<dir>/db/bolt.db), or none (no persistence: OTT replay refused in memory until restart, revocation answers 501)")
	flag.StringVar(&minDur, "min-tls-dur", "", "provisioner claim minTLSCertDuration (e.g. 5m); default: step-ca's 5m")
	flag.StringVar(&maxDur, "max-tls-dur", "", "provisioner claim maxTLSCertDuration (e.g. 24h); default: step-ca's 24h")
	flag.StringVar(&defDur, "default-tls-dur", "", "provisioner claim defaultTLSCertDuration (e.g. 24h); default: step-ca's 24h")
	flag.BoolVar(&disableRenewal, "disable-renewal", false, "provisioner claim disableRenewal=true: refuse POST /renew and /rekey for its certificates (step-ca allows renewal by default, and a renewal copies the custom OIDs without a new token)")
	flag.StringVar(&configRoot, "config-root", "", "write the paths inside ca.json relative to this directory instead of --dir (e.g. /home/step when --dir is mounted at /home/step in the smallstep/step-ca image); files are still written under --dir")
	flag.BoolVar(&force, "force", false, "overwrite an existing CA in --dir")
	flag.Var(&extras, "extra-provisioner", "NAME=TEMPLATE_FILE: add another JWK provisioner (own key) rendering with TEMPLATE_FILE; repeatable")
	flag.Parse()

	if dir == "" || passFile == "" || tmpl == "" {
		flag.Usage()
		die("--dir, --password-file and --template are required")
	}
	absDir, err := filepath.Abs(dir)
	if err != nil {
		die("%v", err)
	}

	// pki.* derives every path from step.Path(), which is fixed at process
	// start from $STEPPATH: re-exec with the right environment.
	if filepath.Clean(os.Getenv(step.PathEnv)) != absDir || step.BasePath() != absDir {
		if os.Getenv("MOSAIC_STEP_INIT_REEXEC") == "1" {
			die("STEPPATH re-exec did not take effect (%s != %s)", step.BasePath(), absDir)
		}
		if err := os.MkdirAll(absDir, 0700); err != nil {
			die("%v", err)
		}
		env := append(os.Environ(), step.PathEnv+"="+absDir, "MOSAIC_STEP_INIT_REEXEC=1")
		self, err := os.Executable()
		if err != nil {
			die("%v", err)
		}
		if err := syscall.Exec(self, os.Args, env); err != nil {
			die("re-exec: %v", err)
		}
	}

	caConfigPath := filepath.Join(absDir, "config", "ca.json")
	if _, err := os.Stat(caConfigPath); err == nil && !force {
		die("%s already exists (use --force to overwrite)", caConfigPath)
	}
	if force {
		for _, sub := range []string{"certs", "secrets", "config", "templates", "db"} {
			os.RemoveAll(filepath.Join(absDir, sub))
		}
	}

	pass, err := os.ReadFile(passFile)
	if err != nil {
		die("reading password file: %v", err)
	}
	// Same trimming as `step-ca start --password-file`.
	pass = bytes.TrimRightFunc(pass, unicode.IsSpace)
	if len(pass) == 0 {
		die("password file %s is empty", passFile)
	}
	absPassFile, _ := filepath.Abs(passFile)

	host, _, err := net.SplitHostPort(address)
	if err != nil {
		die("--address: %v", err)
	}
	var dnsNames []string
	if dns == "" {
		if host == "" {
			die("--address %q has no host: pass --dns", address)
		}
		dnsNames = []string{host}
	} else {
		for _, d := range strings.Split(dns, ",") {
			if d = strings.TrimSpace(d); d != "" {
				dnsNames = append(dnsNames, d)
			}
		}
	}

	claims, err := buildClaims(minDur, maxDur, defDur, disableRenewal)
	if err != nil {
		die("%v", err)
	}

	type extraProv struct{ name, tmpl string }
	var extraProvs []extraProv
	seen := map[string]bool{provName: true}
	for _, e := range extras {
		parts := strings.SplitN(e, "=", 2)
		if len(parts) != 2 || parts[0] == "" || parts[1] == "" {
			die("--extra-provisioner wants NAME=TEMPLATE_FILE, got %q", e)
		}
		if seen[parts[0]] {
			die("duplicate provisioner name %q", parts[0])
		}
		seen[parts[0]] = true
		extraProvs = append(extraProvs, extraProv{parts[0], parts[1]})
	}

	// ---- PKI: root, intermediate, main JWK provisioner (library code path).
	p, err := pki.New(apiv1.Options{Type: apiv1.SoftCAS, IsCreator: true},
		pki.WithAddress(address),
		pki.WithDNSNames(dnsNames),
		pki.WithProvisioner(provName),
	)
	if err != nil {
		die("pki.New: %v", err)
	}
	if err := p.GenerateKeyPairs(pass); err != nil {
		die("generating provisioner key: %v", err)
	}
	root, err := p.GenerateRootCertificate(name, name, name, pass)
	if err != nil {
		die("generating root: %v", err)
	}
	if err := p.GenerateIntermediateCertificate(name, name, name, root, pass); err != nil {
		die("generating intermediate: %v", err)
	}
	if err := p.WriteFiles(); err != nil {
		die("writing keys/certs: %v", err)
	}

	x509TplDir := filepath.Join(absDir, "templates", "x509")
	secretsDir := filepath.Join(absDir, "secrets")
	if err := os.MkdirAll(x509TplDir, 0700); err != nil {
		die("%v", err)
	}
	copyTemplate := func(src string) string {
		b, err := os.ReadFile(src)
		if err != nil {
			die("reading template %s: %v", src, err)
		}
		dst := filepath.Join(x509TplDir, filepath.Base(src))
		if err := os.WriteFile(dst, b, 0644); err != nil {
			die("%v", err)
		}
		return dst
	}

	cfg, err := p.GenerateConfig(func(c *config.Config) error {
		switch dbType {
		case "none":
			c.DB = nil
		case "badgerv2":
			c.DB = &db.Config{Type: dbType, DataSource: filepath.Join(absDir, "db")}
		case "bbolt": // bbolt's data source is a file
			c.DB = &db.Config{Type: dbType, DataSource: filepath.Join(absDir, "db", "bolt.db")}
		default:
			return fmt.Errorf("unknown --db %q", dbType)
		}
		return nil
	})
	if err != nil {
		die("generating ca.json: %v", err)
	}

	// Main provisioner (created by pki.GenerateKeyPairs, added to the config
	// by GenerateConfig after the modifiers ran).
	var provs []provSummary
	if len(cfg.AuthorityConfig.Provisioners) != 1 {
		die("expected 1 provisioner from pki, got %d", len(cfg.AuthorityConfig.Provisioners))
	}
	jwk, ok := cfg.AuthorityConfig.Provisioners[0].(*provisioner.JWK)
	if !ok {
		die("pki provisioner is %T, want *provisioner.JWK", cfg.AuthorityConfig.Provisioners[0])
	}
	tplPath := copyTemplate(tmpl)
	jwk.Options = &provisioner.Options{X509: &provisioner.X509Options{TemplateFile: tplPath}}
	jwk.Claims = claims
	keyFile := filepath.Join(secretsDir, "provisioner_key.json")
	if err := writePlainKey(jwk.EncryptedKey, pass, jwk.Key.KeyID, keyFile); err != nil {
		die("%v", err)
	}
	provs = append(provs, provSummary{jwk.Name, jwk.Key.KeyID, keyFile, tplPath})

	// Extra provisioners, each with its own key pair.
	for _, e := range extraProvs {
		pub, jwe, err := jose.GenerateDefaultKeyPair(pass)
		if err != nil {
			die("%v", err)
		}
		enc, err := jwe.CompactSerialize()
		if err != nil {
			die("%v", err)
		}
		tplPath := copyTemplate(e.tmpl)
		cfg.AuthorityConfig.Provisioners = append(cfg.AuthorityConfig.Provisioners, &provisioner.JWK{
			Type:         "JWK",
			Name:         e.name,
			Key:          pub,
			EncryptedKey: enc,
			Claims:       claims,
			Options:      &provisioner.Options{X509: &provisioner.X509Options{TemplateFile: tplPath}},
		})
		keyFile := filepath.Join(secretsDir, "provisioner_key."+e.name+".json")
		if err := writePlainKey(enc, pass, pub.KeyID, keyFile); err != nil {
			die("%v", err)
		}
		provs = append(provs, provSummary{e.name, pub.KeyID, keyFile, tplPath})
	}

	// Paths as the server will see them (e.g. /home/step inside the
	// smallstep/step-ca image when --dir is mounted there).
	if configRoot != "" {
		rebase := func(p string) string {
			if rel, err := filepath.Rel(absDir, p); err == nil && !strings.HasPrefix(rel, "..") {
				return filepath.Join(configRoot, rel)
			}
			return p
		}
		for i := range cfg.Root {
			cfg.Root[i] = rebase(cfg.Root[i])
		}
		cfg.IntermediateCert = rebase(cfg.IntermediateCert)
		cfg.IntermediateKey = rebase(cfg.IntermediateKey)
		if cfg.DB != nil {
			cfg.DB.DataSource = rebase(cfg.DB.DataSource)
		}
		for _, pi := range cfg.AuthorityConfig.Provisioners {
			if j, ok := pi.(*provisioner.JWK); ok && j.Options != nil && j.Options.X509 != nil {
				j.Options.X509.TemplateFile = rebase(j.Options.X509.TemplateFile)
			}
		}
	}

	b, err := json.MarshalIndent(cfg, "", "\t")
	if err != nil {
		die("%v", err)
	}
	if err := os.WriteFile(caConfigPath, append(b, '\n'), 0644); err != nil {
		die("%v", err)
	}
	if cfg.DB != nil {
		if err := os.MkdirAll(filepath.Join(absDir, "db"), 0700); err != nil {
			die("%v", err)
		}
	}
	// Sanity: the written file must load and validate like the server does.
	if loaded, err := config.LoadConfiguration(caConfigPath); err != nil {
		die("written ca.json does not load: %v", err)
	} else if err := loaded.Validate(); err != nil {
		die("written ca.json does not validate: %v", err)
	}

	_, port, _ := net.SplitHostPort(address)
	s := summary{
		CAURL:           fmt.Sprintf("https://%s", net.JoinHostPort(dnsNames[0], port)),
		Address:         address,
		DNSNames:        dnsNames,
		CAConfig:        caConfigPath,
		Root:            filepath.Join(absDir, "certs", "root_ca.crt"),
		RootFingerprint: p.GetRootFingerprint(),
		Intermediate:    filepath.Join(absDir, "certs", "intermediate_ca.crt"),
		PasswordFile:    absPassFile,
		DBType:          dbType,
		Provisioners:    provs,
	}
	out, _ := json.MarshalIndent(s, "", "  ")
	if err := os.WriteFile(filepath.Join(absDir, "config", "mosaic.json"), append(out, '\n'), 0644); err != nil {
		die("%v", err)
	}
	fmt.Println(string(out))
}

// writePlainKey decrypts the provisioner's JWE with the password (proving the
// encrypted form round-trips) and writes the private JWK as JSON, mode 0600.
func writePlainKey(encrypted string, pass []byte, kid, path string) error {
	plain, err := jose.Decrypt([]byte(encrypted), jose.WithPassword(pass))
	if err != nil {
		return fmt.Errorf("decrypting provisioner key: %w", err)
	}
	var k jose.JSONWebKey
	if err := json.Unmarshal(plain, &k); err != nil {
		return fmt.Errorf("parsing decrypted provisioner key: %w", err)
	}
	if k.KeyID != kid || k.IsPublic() {
		return fmt.Errorf("decrypted provisioner key mismatch (kid %q, want %q)", k.KeyID, kid)
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, plain, "", "  "); err != nil {
		return err
	}
	pretty.WriteByte('\n')
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0600)
	if err != nil {
		return err
	}
	if _, err := f.Write(pretty.Bytes()); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0600); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func buildClaims(minDur, maxDur, defDur string, disableRenewal bool) (*provisioner.Claims, error) {
	if minDur == "" && maxDur == "" && defDur == "" && !disableRenewal {
		return nil, nil
	}
	c := &provisioner.Claims{}
	if disableRenewal {
		t := true
		c.DisableRenewal = &t
	}
	parse := func(s string) (*provisioner.Duration, error) {
		if s == "" {
			return nil, nil
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return nil, err
		}
		return &provisioner.Duration{Duration: d}, nil
	}
	var err error
	if c.MinTLSDur, err = parse(minDur); err != nil {
		return nil, err
	}
	if c.MaxTLSDur, err = parse(maxDur); err != nil {
		return nil, err
	}
	if c.DefaultTLSDur, err = parse(defDur); err != nil {
		return nil, err
	}
	return c, nil
}

// Command mosaic-step-ca runs a smallstep step-ca server built from Debian's
// golang-github-smallstep-certificates-dev sources (v0.19). Debian ships the
// library but not cmd/step-ca, so this is the minimal equivalent of upstream's
// main: it exposes the library's `commands.AppCommand` ("start") plus the
// commands the `commands` package registers (export, onboard) and `version`.
//
// Usage:
//
//	STEPPATH=/path/to/ca mosaic-step-ca /path/to/ca/config/ca.json --password-file /path/to/password
//	mosaic-step-ca start /path/to/ca/config/ca.json --password-file ...   (same thing)
//
// Build: see ../../build.sh (GOPATH=/usr/share/gocode GO111MODULE=off).
package main

import (
	"fmt"
	"os"
	"runtime"

	"github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/commands"
	"github.com/urfave/cli"
	"go.step.sm/cli-utils/command"
	"go.step.sm/cli-utils/step"
)

// Version is the version of the Debian library this binary is built against
// (reported by GET /version and in the start-up log).
var Version = "0.19.0"

func main() {
	// Same wiring as upstream cmd/step-ca: name/version for logs + /version.
	step.Set("Smallstep CA", Version, "N/A")
	authority.GlobalVersion.Version = Version

	app := cli.NewApp()
	app.Name = "mosaic-step-ca"
	app.HelpName = "mosaic-step-ca"
	app.Usage = "smallstep step-ca (library v0.19) for the mosaic test/bench harness"
	app.Version = fmt.Sprintf("Smallstep CA/%s (%s/%s, Debian golang-github-smallstep-certificates-dev)", Version, runtime.GOOS, runtime.GOARCH)
	app.Writer = os.Stdout
	app.ErrWriter = os.Stderr

	start := commands.AppCommand
	start.Usage = "run the CA with the given ca.json"
	app.Commands = []cli.Command{start}
	// Commands registered by the `commands` package (export, onboard). Skip
	// cli-utils' own "help" so urfave/cli installs its default help + --help.
	for _, c := range command.Retrieve() {
		if c.Name != "help" {
			app.Commands = append(app.Commands, c)
		}
	}
	app.Commands = append(app.Commands, cli.Command{
		Name:  "version",
		Usage: "print the version",
		Action: func(*cli.Context) error {
			fmt.Println(app.Version)
			return nil
		},
	})

	// Like upstream step-ca, `mosaic-step-ca <ca.json> [flags]` runs "start".
	args := os.Args
	if len(args) > 1 && !isCommand(app, args[1]) && args[1] != "--help" && args[1] != "-h" &&
		args[1] != "--version" && args[1] != "-v" {
		args = append([]string{args[0], start.Name}, args[1:]...)
	}

	if err := app.Run(args); err != nil {
		if os.Getenv("STEPDEBUG") == "1" {
			fmt.Fprintf(os.Stderr, "%+v\n", err)
		} else {
			fmt.Fprintln(os.Stderr, err)
		}
		os.Exit(1)
	}
}

func isCommand(app *cli.App, name string) bool {
	for _, c := range app.Commands {
		if c.HasName(name) {
			return true
		}
	}
	return name == "help" || name == "h"
}

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

	"github.com/smallstep/certificates/commands"
	"github.com/urfave/cli"
	"go.step.sm/cli-utils/command"
)

// Version is the version of the Debian library this binary is built against.
var Version = "0.19.0-debian"

func main() {
	app := cli.NewApp()
	app.Name = "mosaic-step-ca"
	app.HelpName = "mosaic-step-ca"
	app.Usage = "smallstep step-ca (library v0.19) for the mosaic test/bench harness"
	app.Version = fmt.Sprintf("Smallstep CA/%s (%s/%s)", Version, runtime.GOOS, runtime.GOARCH)
	app.Writer = os.Stdout
	app.ErrWriter = os.Stderr

	start := commands.AppCommand
	app.Commands = append([]cli.Command{start}, command.Retrieve()...)
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

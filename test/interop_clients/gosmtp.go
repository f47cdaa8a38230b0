// gosmtp.go - one message through Go's net/smtp (standard library only), for
// test/interop_clients.sh. Run with `go run gosmtp.go MODE ADDR CAFILE USER PASSWORD FROM TO FILE`.
//
// MODE "plain": smtp.Client in clear (Dial, EHLO localhost, MAIL, RCPT, DATA, QUIT). smtp.SendMail
// is not used: it says STARTTLS by itself whenever the server offers it.
// MODE "starttls": the same, with an explicit StartTLS that verifies the server's certificate
// against CAFILE only (the name to match is ADDR's host, so 127.0.0.1 needs an IP SAN), then
// AUTH PLAIN as USER with PASSWORD when USER is not "-". smtp.PlainAuth's host must be ADDR's
// host: net/smtp refuses it ("wrong host name") when it differs from the name it dialled.
//
// FILE is sent as it is (the DATA writer dot-stuffs it). Each step is printed; any error ends
// the program with status 1.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/smtp"
	"os"
	"time"
)

func die(step string, err error) {
	fmt.Fprintf(os.Stderr, "gosmtp: %s: %v\n", step, err)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 9 {
		fmt.Fprintln(os.Stderr, "usage: gosmtp MODE ADDR CAFILE USER PASSWORD FROM TO FILE")
		os.Exit(2)
	}
	mode, addr, cafile, user, password, from, to, path :=
		os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5], os.Args[6], os.Args[7], os.Args[8]
	if mode != "plain" && mode != "starttls" {
		fmt.Fprintf(os.Stderr, "gosmtp: unknown mode %q\n", mode)
		os.Exit(2)
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		die("address", err)
	}
	message, err := os.ReadFile(path)
	if err != nil {
		die("read message", err)
	}

	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		die("dial", err)
	}
	// Bounds the whole session, TLS handshake included.
	if err := conn.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
		die("deadline", err)
	}
	c, err := smtp.NewClient(conn, host) // reads the greeting
	if err != nil {
		die("greeting", err)
	}
	fmt.Println("connected to", addr)
	if err := c.Hello("localhost"); err != nil {
		die("EHLO", err)
	}
	if mode == "starttls" {
		if ok, _ := c.Extension("STARTTLS"); !ok {
			die("STARTTLS", fmt.Errorf("the server does not offer it"))
		}
		pem, err := os.ReadFile(cafile)
		if err != nil {
			die("read CA file", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			die("CA file", fmt.Errorf("no PEM certificate in %s", cafile))
		}
		if err := c.StartTLS(&tls.Config{ServerName: host, RootCAs: roots}); err != nil {
			die("STARTTLS", err)
		}
		state, _ := c.TLSConnectionState()
		fmt.Printf("TLS: version 0x%04x, verified chains %d\n", state.Version, len(state.VerifiedChains))
		if user != "-" {
			if ok, mechanisms := c.Extension("AUTH"); !ok {
				die("AUTH", fmt.Errorf("the server does not offer AUTH after STARTTLS"))
			} else {
				fmt.Println("AUTH offered:", mechanisms)
			}
			if err := c.Auth(smtp.PlainAuth("", user, password, host)); err != nil {
				die("AUTH PLAIN", err)
			}
			fmt.Println("authenticated as", user)
		}
	}
	if err := c.Mail(from); err != nil {
		die("MAIL", err)
	}
	if err := c.Rcpt(to); err != nil {
		die("RCPT", err)
	}
	w, err := c.Data()
	if err != nil {
		die("DATA", err)
	}
	if _, err := w.Write(message); err != nil {
		die("DATA write", err)
	}
	if err := w.Close(); err != nil { // sends ".", reads the reply
		die("end of DATA", err)
	}
	fmt.Println("message accepted")
	if err := c.Quit(); err != nil {
		die("QUIT", err)
	}
	fmt.Println("done")
}

// The API server's own webhook token authenticator
// (k8s.io/apiserver/plugin/pkg/authenticator/token/webhook), run on its own: it reads
// tokens from standard input, one a line, authenticates each against the webhook its
// kubeconfig names, exactly as kube-apiserver would with
// --authentication-token-webhook-config-file, and prints one JSON line per token.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	webhookutil "k8s.io/apiserver/pkg/util/webhook"
	"k8s.io/apiserver/plugin/pkg/authenticator/token/webhook"
)

type answer struct {
	Authenticated bool                `json:"authenticated"`
	Username      string              `json:"username,omitempty"`
	UID           string              `json:"uid,omitempty"`
	Groups        []string            `json:"groups,omitempty"`
	Extra         map[string][]string `json:"extra,omitempty"`
	Audiences     []string            `json:"audiences,omitempty"`
	Error         string              `json:"error,omitempty"`
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "the webhook's kubeconfig")
	version := flag.String("version", "v1beta1", "the TokenReview version: v1 or v1beta1")
	audiences := flag.String("audiences", "", "the audiences asked for, comma-separated (none: no audience check)")
	implicit := flag.String("api-audiences", "https://kubernetes.default.svc.cluster.local", "the API server's own audiences")
	flag.Parse()

	config, err := webhookutil.LoadKubeconfig(*kubeconfig, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(2)
	}
	// One try: the tests count TokenReviews.
	backoff := wait.Backoff{Duration: 500 * time.Millisecond, Factor: 1.5, Jitter: 0.2, Steps: 1}
	auth, err := webhook.New(config, *version, authenticator.Audiences(strings.Split(*implicit, ",")), backoff)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(2)
	}
	scanner := bufio.NewScanner(os.Stdin)
	scanner.Buffer(make([]byte, 64*1024), 1024*1024)
	out := json.NewEncoder(os.Stdout)
	for scanner.Scan() {
		ctx := context.Background()
		if *audiences != "" {
			ctx = authenticator.WithAudiences(ctx, strings.Split(*audiences, ","))
		}
		response, ok, err := auth.AuthenticateToken(ctx, scanner.Text())
		a := answer{Authenticated: ok}
		if err != nil {
			a.Error = err.Error()
		}
		if ok {
			a.Username = response.User.GetName()
			a.UID = response.User.GetUID()
			a.Groups = response.User.GetGroups()
			a.Extra = response.User.GetExtra()
			a.Audiences = response.Audiences
		}
		if err := out.Encode(a); err != nil {
			fmt.Fprintln(os.Stderr, "error:", err)
			os.Exit(2)
		}
	}
}

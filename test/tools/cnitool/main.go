// cnitool: a test driver with upstream cnitool's command line, on top of the
// libcni that Debian ships (golang-github-appc-cni-dev). It lets the tests
// run network lists the way a real runtime library does: libcni builds each
// plugin's stdin, injects runtimeConfig from capabilities, caches the result
// and feeds it back as prevResult for CHECK and DEL.
package main

import (
	"context"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func usage() {
	fmt.Fprintf(os.Stderr, `usage: %s add|check|del|gc|status <net> [<netns-path>]

environment:
  NETCONFPATH      directory of network configs (default /etc/cni/net.d)
  CNI_PATH         plugin directories, colon separated (default /opt/cni/bin)
  CNI_IFNAME       interface name in the container (default eth0)
  CNI_ARGS         K=V;K2=V2 passed to every plugin
  CAP_ARGS         JSON object of capability arguments (portMappings, ips, mac, ...)
  CNI_CONTAINERID  container id (default cnitool-<20 hex of sha512(netns path)>)
  CNI_CACHEDIR     libcni result cache directory (default libcni's)
`, filepath.Base(os.Args[0]))
	os.Exit(2)
}

func fail(err error) {
	if e, ok := err.(*types.Error); ok {
		out, _ := json.Marshal(e)
		fmt.Fprintln(os.Stderr, string(out))
	} else {
		fmt.Fprintln(os.Stderr, err.Error())
	}
	os.Exit(1)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func parseArgs(s string) ([][2]string, error) {
	var out [][2]string
	for _, pair := range strings.Split(s, ";") {
		if pair == "" {
			continue
		}
		kv := strings.SplitN(pair, "=", 2)
		if len(kv) != 2 || kv[0] == "" {
			return nil, fmt.Errorf("invalid CNI_ARGS pair %q", pair)
		}
		out = append(out, [2]string{kv[0], kv[1]})
	}
	return out, nil
}

func main() {
	if len(os.Args) < 3 {
		usage()
	}
	command, netName := os.Args[1], os.Args[2]
	netns := ""
	if len(os.Args) > 3 {
		netns = os.Args[3]
	}
	switch command {
	case "add", "check", "del":
		if netns == "" {
			usage()
		}
	case "gc", "status":
		fmt.Fprintf(os.Stderr, "%s is not supported by this libcni version (Debian's libcni predates CNI 1.1)\n", command)
		os.Exit(2)
	default:
		usage()
	}

	confDir := envOr("NETCONFPATH", "/etc/cni/net.d")
	list, err := libcni.LoadConfList(confDir, netName)
	if err != nil {
		if _, missing := err.(libcni.NotFoundError); !missing {
			fail(err)
		}
		conf, err2 := libcni.LoadConf(confDir, netName)
		if err2 != nil {
			fail(err)
		}
		if list, err = libcni.ConfListFromConf(conf); err != nil {
			fail(err)
		}
	}

	var capArgs map[string]interface{}
	if s := os.Getenv("CAP_ARGS"); s != "" {
		if err := json.Unmarshal([]byte(s), &capArgs); err != nil {
			fail(fmt.Errorf("CAP_ARGS is not a JSON object: %v", err))
		}
	}
	cniArgs, err := parseArgs(os.Getenv("CNI_ARGS"))
	if err != nil {
		fail(err)
	}
	containerID := os.Getenv("CNI_CONTAINERID")
	if containerID == "" {
		sum := sha512.Sum512([]byte(netns))
		containerID = "cnitool-" + hex.EncodeToString(sum[:])[:20]
	}
	rt := &libcni.RuntimeConf{
		ContainerID:    containerID,
		NetNS:          netns,
		IfName:         envOr("CNI_IFNAME", "eth0"),
		Args:           cniArgs,
		CapabilityArgs: capArgs,
	}

	paths := filepath.SplitList(envOr("CNI_PATH", "/opt/cni/bin"))
	var cni *libcni.CNIConfig
	if dir := os.Getenv("CNI_CACHEDIR"); dir != "" {
		cni = libcni.NewCNIConfigWithCacheDir(paths, dir, nil)
	} else {
		cni = libcni.NewCNIConfig(paths, nil)
	}

	ctx := context.Background()
	switch command {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		if err := result.Print(); err != nil {
			fail(err)
		}
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	}
}

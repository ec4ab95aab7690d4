// reef-libcni drives Reef's plugins through libcni, the library containerd and CRI-O call,
// so the tests see exactly what a real runtime does: conflist parsing, the result cache,
// prevResult chaining and DEL in reverse order are libcni's, not ours.
//
//	reef-libcni add|del|check|validate CONFLIST NETNS [CONTAINER_ID [IFNAME]]
//	reef-libcni bench CONFLIST ROUNDS NETNS_PREFIX
//
// Environment: CNI_PATH (colon-separated plugin directories), CNI_CACHE (libcni's result
// cache), CAP_ARGS (a JSON object of capability args such as portMappings) and RT_ARGS
// ("K=V;K=V", passed as CNI_ARGS). Errors go to stderr with exit status 1.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
)

const usage = "usage: reef-libcni add|del|check|validate CONFLIST NETNS [CONTAINER_ID [IFNAME]]\n" +
	"       reef-libcni bench CONFLIST ROUNDS NETNS_PREFIX"

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "reef-libcni: "+format+"\n", args...)
	os.Exit(1)
}

// attachment is one container interface as libcni sees it.
func attachment(containerID, netns, ifname string) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{ContainerID: containerID, NetNS: netns, IfName: ifname}
	if raw, ok := os.LookupEnv("CAP_ARGS"); ok && raw != "" {
		caps := map[string]interface{}{}
		if err := json.Unmarshal([]byte(raw), &caps); err != nil {
			fail("CAP_ARGS is not a JSON object: %v", err)
		}
		rt.CapabilityArgs = caps
	}
	if raw, ok := os.LookupEnv("RT_ARGS"); ok && raw != "" {
		for _, pair := range strings.Split(raw, ";") {
			key, value, found := strings.Cut(pair, "=")
			if !found {
				fail("RT_ARGS entry %q is not K=V", pair)
			}
			rt.Args = append(rt.Args, [2]string{key, value})
		}
	}
	return rt
}

func main() {
	if len(os.Args) < 4 || (os.Args[1] == "bench" && len(os.Args) < 5) {
		fail("%s", usage)
	}
	verb, conflistPath := os.Args[1], os.Args[2]
	list, err := libcni.ConfListFromFile(conflistPath)
	if err != nil {
		fail("reading %s: %v", conflistPath, err)
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv("CNI_PATH")), os.Getenv("CNI_CACHE"), nil)
	ctx := context.Background()

	if verb == "bench" {
		bench(ctx, cni, list, os.Args[3], os.Args[4])
		return
	}
	containerID, ifname := "reef-test", "eth0"
	if len(os.Args) > 4 {
		containerID = os.Args[4]
	}
	if len(os.Args) > 5 {
		ifname = os.Args[5]
	}
	rt := attachment(containerID, os.Args[3], ifname)
	switch verb {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail("ADD %s: %v", list.Name, err)
		}
		out, err := json.MarshalIndent(result, "", "  ")
		if err != nil {
			fail("encoding the result: %v", err)
		}
		fmt.Println(string(out))
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail("DEL %s: %v", list.Name, err)
		}
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail("CHECK %s: %v", list.Name, err)
		}
	case "validate":
		caps, err := cni.ValidateNetworkList(ctx, list)
		if err != nil {
			fail("VALIDATE %s: %v", list.Name, err)
		}
		fmt.Println(strings.Join(caps, "\n"))
	default:
		fail("unknown verb %q\n%s", verb, usage)
	}
}

// bench times ROUNDS ADD+DEL pairs, each in a fresh named netns, and prints quantiles in ms.
func bench(ctx context.Context, cni *libcni.CNIConfig, list *libcni.NetworkConfigList, roundsArg, prefix string) {
	rounds, err := strconv.Atoi(roundsArg)
	if err != nil || rounds < 1 {
		fail("ROUNDS must be a positive integer, not %q", roundsArg)
	}
	adds := make([]time.Duration, 0, rounds)
	dels := make([]time.Duration, 0, rounds)
	for i := 0; i < rounds; i++ {
		name := prefix + strconv.Itoa(i)
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			fail("ip netns add %s: %v: %s", name, err, out)
		}
		rt := attachment("bench-"+strconv.Itoa(i), "/var/run/netns/"+name, "eth0")
		start := time.Now()
		if _, err := cni.AddNetworkList(ctx, list, rt); err != nil {
			fail("ADD round %d: %v", i, err)
		}
		adds = append(adds, time.Since(start))
		start = time.Now()
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail("DEL round %d: %v", i, err)
		}
		dels = append(dels, time.Since(start))
		// Best effort: a leftover netns is the caller's to notice, not a bench failure.
		_ = exec.Command("ip", "netns", "del", name).Run()
	}
	fmt.Printf("add_p50_ms=%.3f add_p90_ms=%.3f del_p50_ms=%.3f del_p90_ms=%.3f\n",
		quantileMs(adds, 0.5), quantileMs(adds, 0.9), quantileMs(dels, 0.5), quantileMs(dels, 0.9))
}

func quantileMs(samples []time.Duration, q float64) float64 {
	sort.Slice(samples, func(a, b int) bool { return samples[a] < samples[b] })
	return float64(samples[int(q*float64(len(samples)-1))].Microseconds()) / 1000
}

// Renders a Helm chart's templates the way `helm template` does, for the
// chart tests on machines without Helm: Go's text/template (Helm's own
// template engine), the chart's values as JSON (Helm's values are JSON
// numbers too), and the few template functions the chart uses, written here
// to Helm's documented behaviour. Only the standard library, so that
// Debian's golang-go runs it as it is.
//
//	go run render_chart.go CHART_DIR VALUES_JSON RELEASE NAMESPACE
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/template"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "render_chart: "+format+"\n", args...)
	os.Exit(1)
}

// empty is Helm's (sprig's) notion of an unset value for `default`.
func empty(v interface{}) bool {
	switch x := v.(type) {
	case nil:
		return true
	case string:
		return x == ""
	case bool:
		return !x
	case float64:
		return x == 0
	case []interface{}:
		return len(x) == 0
	case map[string]interface{}:
		return len(x) == 0
	}
	return false
}

func indent(n int, s string) string {
	pad := strings.Repeat(" ", n)
	return pad + strings.ReplaceAll(s, "\n", "\n"+pad)
}

func main() {
	if len(os.Args) != 5 {
		fail("usage: render_chart CHART_DIR VALUES_JSON RELEASE NAMESPACE")
	}
	chartDir, valuesPath, release, namespace := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	raw, err := os.ReadFile(valuesPath)
	if err != nil {
		fail("%v", err)
	}
	var values map[string]interface{}
	if err := json.Unmarshal(raw, &values); err != nil {
		fail("values: %v", err)
	}
	root := template.New("chart").Option("missingkey=zero")
	funcs := template.FuncMap{
		// JSON is YAML; Helm's toYaml drops the final newline too.
		"toYaml": func(v interface{}) (string, error) {
			b, err := json.Marshal(v)
			return string(b), err
		},
		"indent":  indent,
		"nindent": func(n int, s string) string { return "\n" + indent(n, s) },
		"join": func(sep string, list []interface{}) string {
			parts := make([]string, len(list))
			for i, v := range list {
				parts[i] = fmt.Sprint(v)
			}
			return strings.Join(parts, sep)
		},
		"quote": func(v interface{}) string { return fmt.Sprintf("%q", fmt.Sprint(v)) },
		"default": func(d interface{}, given ...interface{}) interface{} {
			if len(given) == 0 || empty(given[0]) {
				return d
			}
			return given[0]
		},
		"required": func(msg string, v interface{}) (interface{}, error) {
			if empty(v) {
				return nil, fmt.Errorf("%s", msg)
			}
			return v, nil
		},
		// As sprig's: numbers and numeric strings, else 0.
		"int": func(v interface{}) int {
			switch x := v.(type) {
			case float64:
				return int(x)
			case string:
				n, _ := strconv.Atoi(x)
				return n
			}
			return 0
		},
		"add": func(a, b int) int { return a + b },
		"fail": func(msg string) (string, error) { return "", fmt.Errorf("%s", msg) },
		"include": func(name string, data interface{}) (string, error) {
			var out strings.Builder
			err := root.ExecuteTemplate(&out, name, data)
			return out.String(), err
		},
	}
	root.Funcs(funcs)
	files, _ := filepath.Glob(filepath.Join(chartDir, "templates", "*"))
	sort.Strings(files)
	for _, f := range files {
		text, err := os.ReadFile(f)
		if err != nil {
			fail("%v", err)
		}
		if _, err := root.New(filepath.Base(f)).Parse(string(text)); err != nil {
			fail("%v", err)
		}
	}
	chartYaml, _ := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	chart := map[string]interface{}{}
	for _, line := range strings.Split(string(chartYaml), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			key := strings.ToUpper(k[:1]) + k[1:]
			chart[key] = strings.Trim(strings.TrimSpace(v), `"`)
		}
	}
	data := map[string]interface{}{
		"Values":  values,
		"Release": map[string]interface{}{"Name": release, "Namespace": namespace, "Service": "Helm"},
		"Chart":   chart,
	}
	for _, f := range files {
		name := filepath.Base(f)
		if strings.HasPrefix(name, "_") {
			continue
		}
		var out strings.Builder
		if err := root.ExecuteTemplate(&out, name, data); err != nil {
			fail("%v", err)
		}
		fmt.Printf("---\n# Source: %s/templates/%s\n%s\n",
			filepath.Base(chartDir), name,
			strings.ReplaceAll(out.String(), "<no value>", ""))
	}
}

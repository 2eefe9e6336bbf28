// test-apiserver: the real k8s.io/apiserver library serving core/v1 pods on a real etcd, for
// plura-relay's pod-identity tests. It is not kube-apiserver: no admission, no validation, no
// RBAC (anonymous and allow-all), only pods; but list, watch, field selectors, resourceVersion,
// bookmarks (the watch cache) and 410 Gone are the library's own.
//
//	test-apiserver --etcd http://127.0.0.1:N --port P --cert-dir DIR [--bump-revision K]
//
// --port 0 binds an ephemeral port; the bound address is printed as "serving on HOST:PORT".
// --bump-revision K first writes a key outside the pods' prefix K times and compacts etcd there,
// so every resourceVersion a client held from before is too old (a forced 410 Gone).
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/authentication/request/anonymous"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/server/options"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/names"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	basecompatibility "k8s.io/component-base/compatibility"
	"k8s.io/kube-openapi/pkg/common"
	openapiutil "k8s.io/kube-openapi/pkg/util"
	"k8s.io/kube-openapi/pkg/validation/spec"
)

var (
	scheme = runtime.NewScheme()
	codecs = serializer.NewCodecFactory(scheme)
	podGVK = corev1.SchemeGroupVersion.WithKind("Pod")
)

// Field selectors the real API accepts for pods (the ones a node agent uses).
var podFields = map[string]bool{
	"metadata.name": true, "metadata.namespace": true, "spec.nodeName": true,
	"spec.hostNetwork": true, "status.podIP": true, "status.phase": true,
}

func init() {
	must(corev1.AddToScheme(scheme))
	// The v1 types double as the internal version: no conversions, exactly what is stored.
	internal := schema.GroupVersion{Version: runtime.APIVersionInternal}
	scheme.AddKnownTypes(internal, &corev1.Pod{}, &corev1.PodList{})
	metav1.AddToGroupVersion(scheme, schema.GroupVersion{Version: "v1"})
	unversioned := schema.GroupVersion{Group: "", Version: "v1"}
	scheme.AddUnversionedTypes(unversioned, &metav1.Status{}, &metav1.APIVersions{},
		&metav1.APIGroupList{}, &metav1.APIGroup{}, &metav1.APIResourceList{})
	must(scheme.AddFieldLabelConversionFunc(podGVK, func(label, value string) (string, string, error) {
		if podFields[label] {
			return label, value, nil
		}
		return "", "", fmt.Errorf("field label not supported: %s", label)
	}))
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "test-apiserver:", err)
		os.Exit(1)
	}
}

// podAttrs: the labels and the selectable fields of a pod.
func podAttrs(obj runtime.Object) (labels.Set, fields.Set, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return nil, nil, fmt.Errorf("not a pod: %T", obj)
	}
	f := generic.ObjectMetaFieldsSet(&pod.ObjectMeta, true)
	f["spec.nodeName"] = pod.Spec.NodeName
	f["spec.hostNetwork"] = fmt.Sprint(pod.Spec.HostNetwork)
	f["status.podIP"] = pod.Status.PodIP
	f["status.phase"] = string(pod.Status.Phase)
	return labels.Set(pod.Labels), f, nil
}

// definitions: a permissive OpenAPI (any object), which server-side apply's type converter needs;
// Debian ships no generated definitions for k8s.io/api.
func definitions(common.ReferenceCallback) map[string]common.OpenAPIDefinition {
	defs := map[string]common.OpenAPIDefinition{}
	for _, obj := range []runtime.Object{&corev1.Pod{}, &corev1.PodList{}} {
		defs[openapiutil.GetCanonicalTypeName(obj)] = common.OpenAPIDefinition{Schema: spec.Schema{
			SchemaProps:      spec.SchemaProps{Type: []string{"object"}},
			VendorExtensible: spec.VendorExtensible{Extensions: spec.Extensions{"x-kubernetes-preserve-unknown-fields": true}},
		}}
	}
	return defs
}

// strategy: store what the client sent (status included), as an API server without validation.
type strategy struct {
	runtime.ObjectTyper
	names.NameGenerator
}

func (strategy) NamespaceScoped() bool                                            { return true }
func (strategy) PrepareForCreate(context.Context, runtime.Object)                 {}
func (strategy) PrepareForUpdate(context.Context, runtime.Object, runtime.Object) {}
func (strategy) Validate(context.Context, runtime.Object) field.ErrorList         { return nil }
func (strategy) WarningsOnCreate(context.Context, runtime.Object) []string        { return nil }
func (strategy) Canonicalize(runtime.Object)                                      {}
func (strategy) AllowCreateOnUpdate() bool                                        { return false }
func (strategy) AllowUnconditionalUpdate() bool                                   { return true }
func (strategy) ValidateUpdate(context.Context, runtime.Object, runtime.Object) field.ErrorList {
	return nil
}
func (strategy) WarningsOnUpdate(context.Context, runtime.Object, runtime.Object) []string {
	return nil
}

// bump writes a key outside /registry k times and compacts etcd at the last revision.
func bump(endpoint string, k int) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 10 * time.Second})
	must(err)
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var rev int64
	for i := 0; i < k; i++ {
		resp, err := cli.Put(ctx, "/plura-test/bump", fmt.Sprint(i))
		must(err)
		rev = resp.Header.Revision
	}
	_, err = cli.Compact(ctx, rev, clientv3.WithCompactPhysical())
	must(err)
	fmt.Printf("bumped etcd to revision %d and compacted\n", rev)
}

func main() {
	etcd := flag.String("etcd", "http://127.0.0.1:2379", "etcd client URL")
	host := flag.String("host", "127.0.0.1", "address to serve on")
	port := flag.Int("port", 0, "port to serve on (0: ephemeral)")
	certDir := flag.String("cert-dir", "", "where the self-signed serving certificate goes")
	bumpBy := flag.Int("bump-revision", 0, "write and compact etcd this many times before serving")
	flag.Parse()
	if *bumpBy > 0 {
		bump(*etcd, *bumpBy)
	}

	ln, err := net.Listen("tcp", net.JoinHostPort(*host, fmt.Sprint(*port)))
	must(err)
	serving := options.NewSecureServingOptions()
	serving.Listener = ln
	serving.BindAddress = net.ParseIP(*host)
	serving.ServerCert.CertDirectory = *certDir
	must(serving.MaybeDefaultWithSelfSignedCerts("localhost", nil, []net.IP{net.ParseIP(*host)}))

	config := genericapiserver.NewRecommendedConfig(codecs)
	config.EffectiveVersion = basecompatibility.NewEffectiveVersionFromString("", "", "")
	must(serving.WithLoopback().ApplyTo(&config.SecureServing, &config.LoopbackClientConfig))
	config.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(definitions, openapinamer.NewDefinitionNamer(scheme))
	config.OpenAPIV3Config.Info.Title = "plura-test-apiserver"
	config.Authentication.Authenticator = anonymous.NewAuthenticator(nil)
	config.Authorization.Authorizer = authorizerfactory.NewAlwaysAllowAuthorizer()

	backend := storagebackend.NewDefaultConfig("/registry", codecs.LegacyCodec(corev1.SchemeGroupVersion))
	backend.Transport.ServerList = []string{*etcd}
	etcdOptions := options.NewEtcdOptions(backend)
	etcdOptions.EnableWatchCache = true // bookmarks and the watch cache, as kube-apiserver
	must(etcdOptions.ApplyTo(&config.Config))

	server, err := config.Complete().New("plura-test-apiserver", genericapiserver.NewEmptyDelegate())
	must(err)

	s := strategy{scheme, names.SimpleNameGenerator}
	pods := &genericregistry.Store{
		NewFunc:                   func() runtime.Object { return &corev1.Pod{} },
		NewListFunc:               func() runtime.Object { return &corev1.PodList{} },
		DefaultQualifiedResource:  corev1.Resource("pods"),
		SingularQualifiedResource: corev1.Resource("pod"),
		PredicateFunc: func(l labels.Selector, f fields.Selector) storage.SelectionPredicate {
			return storage.SelectionPredicate{Label: l, Field: f, GetAttrs: podAttrs}
		},
		CreateStrategy: s,
		UpdateStrategy: s,
		DeleteStrategy: s,
		TableConvertor: rest.NewDefaultTableConvertor(corev1.Resource("pods")),
	}
	must(pods.CompleteWithOptions(&generic.StoreOptions{RESTOptions: config.RESTOptionsGetter, AttrFunc: podAttrs}))
	group := genericapiserver.NewDefaultAPIGroupInfo("", scheme, runtime.NewParameterCodec(scheme), codecs)
	group.VersionedResourcesStorageMap["v1"] = map[string]rest.Storage{"pods": pods}
	must(server.InstallLegacyAPIGroup(genericapiserver.DefaultLegacyAPIPrefix, &group))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	fmt.Printf("serving on %s\n", ln.Addr().String())
	must(server.PrepareRun().RunWithContext(ctx))
}

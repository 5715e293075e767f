"""Managed images, galleries, gallery image definitions and versions.

The rules an image or a gallery image version made from a VM must meet (generalized source,
security type, generation, architecture, plan) are listed with their Microsoft sources in
docs/azsim-rules.md.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from azsim.arm_http import ArmError, ArmReply, ArmRequest, Route, invalid, not_allowed, not_found, route
from azsim.arm_resources import CP, created, location_in, reader, resource_group, retag, retagged, tags_in
from azsim.state import Gallery, GalleryImage, GalleryImageVersion, Image, Vm

if TYPE_CHECKING:
    from azsim.arm import Simulator

_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def _source_vm(sim: Simulator, vm_id: Any, where: str) -> Vm:
    vm = sim.store.get(str(vm_id or ""))
    if not isinstance(vm, Vm):
        raise ArmError(404, "NotFound", f"Virtual machine '{vm_id}' was not found ({where}).")
    return vm


get_image = reader("Microsoft.Compute/images", Image, lambda image, _: image.to_arm())
get_gallery = reader(
    "Microsoft.Compute/galleries",
    Gallery,
    lambda gallery, store: gallery.to_arm(store.subscription_id),
    key="gallery",
)


#: a VM's security type -> the SecurityType its image definition must declare (None: no feature)
_DEFINITION_FOR = {"Standard": None, "TrustedLaunch": "TrustedLaunch", "ConfidentialVM": "ConfidentialVM"}
#: SecurityTypes whose images hold no VM guest state: a VM cannot be their source
_NO_VM_SOURCE = (
    "TrustedLaunchSupported",
    "ConfidentialVMSupported",
    "TrustedLaunchAndConfidentialVmSupported",
)


def _same_source(existing: Image | GalleryImageVersion, vm: Vm, what: str) -> None:
    """A PUT on an artifact that exists updates it (200); one made from another VM azsim refuses,
    so that no test can rely on re-pointing an image (Azure's answer to that is not documented)."""
    if existing.source_vm_id.lower() != vm.id.lower():
        raise ArmError(
            409,
            "Conflict",
            f"{what} '{existing.name}' exists and was made from '{existing.source_vm_id}'; azsim does not "
            f"re-point it to '{vm.id}'.",
        )


def put_image(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    body = req.json()
    rg = resource_group(sim, m)
    props = body.get("properties") or {}
    with sim.store.lock:
        resource_id = sim.store.compute_id(rg, "images", m["name"])
        vm = _source_vm(
            sim, (props.get("sourceVirtualMachine") or {}).get("id"), "properties.sourceVirtualMachine.id"
        )
        existing = sim.store.get(resource_id)
        if isinstance(existing, Image):
            _same_source(existing, vm, "Image")
            retag(existing, body)
            return ArmReply(200, existing.to_arm())
        if vm.security_type != "Standard":
            raise not_allowed(
                "Creation of managed images are not supported for virtual machine with "
                f"{vm.security_type} security type."
            )
        if vm.architecture != "x64":
            raise not_allowed(
                f"Creation of managed images is not supported for virtual machine '{vm.name}' with the "
                f"{vm.architecture} architecture: capture it to an Azure Compute Gallery."
            )
        if not vm.generalized:
            raise not_allowed("Capture operation cannot be completed because the VM is not generalized.")
        assert vm.os_disk is not None
        image = Image(
            id=resource_id,
            name=m["name"],
            resource_group=rg,
            location=str(body.get("location") or vm.location),
            tags=tags_in(body),
            source_vm_id=vm.id,
            os=vm.os,
            os_disk_id=vm.os_disk.id,
            os_disk_size_gb=vm.os_disk.size_gb,
            data_disks=[(lun, d.id, d.size_gb) for lun, d in sorted(vm.data_disks, key=lambda x: x[0])],
            # the request's value when given (Microsoft tells `az image create` users to pass V2 for a
            # generation 2 VM), else the source's
            hyper_v_generation=str(props.get("hyperVGeneration") or vm.hyper_v_generation),
        )
    return created(sim, req, image, "createImage", 201, image.to_arm, source_vm=vm.key)


def _gallery_image(sim: Simulator, m: dict[str, str], rg: str) -> GalleryImage:
    gallery_id = sim.store.compute_id(rg, "galleries", m["gallery"])
    if not isinstance(sim.store.get(gallery_id), Gallery):
        raise not_found("Microsoft.Compute/galleries", m["gallery"], m["rg"])
    image = sim.store.get(f"{gallery_id}/images/{m['image']}")
    if not isinstance(image, GalleryImage):
        raise not_found("Microsoft.Compute/galleries/images", f"{m['gallery']}/{m['image']}", m["rg"])
    return image


def get_gallery_image(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    rg = resource_group(sim, m)
    with sim.store.lock:
        return ArmReply(200, _gallery_image(sim, m, rg).to_arm())


def put_gallery(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    """Create a gallery (an LRO: Creating, then Succeeded), or update the tags of one."""
    body = req.json()
    rg = resource_group(sim, m)
    with sim.store.lock:
        resource_id = sim.store.compute_id(rg, "galleries", m["gallery"])
        existing = retagged(sim, resource_id, Gallery, body)
        if existing is not None:
            return ArmReply(200, existing.to_arm(sim.store.subscription_id))
        gallery = Gallery(
            id=resource_id,
            name=m["gallery"],
            resource_group=rg,
            location=location_in(sim, body, rg),
            tags=tags_in(body),
        )
    return created(sim, req, gallery, "createGallery", 201, lambda: gallery.to_arm(sim.store.subscription_id))


#: what an image definition must declare (GalleryImageProperties' required properties)
_DEFINITION_REQUIRED = ("osType", "osState", "identifier")


def put_gallery_image(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    """Create an image definition in an existing gallery. A definition that exists is answered
    as it is when the request declares the same properties; azsim refuses to change them."""
    body = req.json()
    rg = resource_group(sim, m)
    props = body.get("properties") or {}
    missing = [key for key in _DEFINITION_REQUIRED if not props.get(key)]
    if missing:
        raise invalid(f"Required parameter 'properties.{missing[0]}' is missing (null).")
    for key in ("hyperVGeneration", "architecture"):
        if not props.get(key):
            # Azure has defaults for these; azsim does not guess them
            raise invalid(f"azsim needs properties.{key} on an image definition (no default modelled).")
    features = props.get("features") or []
    security = None
    for feature in features if isinstance(features, list) else [None]:
        if not isinstance(feature, dict) or feature.get("name") != "SecurityType":
            raise invalid(f"azsim models only the SecurityType feature of a definition; got {feature!r}.")
        security = str(feature.get("value") or "")
    identifier = props["identifier"] if isinstance(props["identifier"], dict) else {}
    plan = props.get("purchasePlan")
    with sim.store.lock:
        gallery_id = sim.store.compute_id(rg, "galleries", m["gallery"])
        gallery = sim.store.get(gallery_id)
        if not isinstance(gallery, Gallery):
            raise not_found("Microsoft.Compute/galleries", m["gallery"], m["rg"])
        image = GalleryImage(
            id=f"{gallery_id}/images/{m['image']}",
            name=m["image"],
            resource_group=rg,
            location=str(body.get("location") or gallery.location),
            tags=tags_in(body),
            os=str(props["osType"]),
            os_state=str(props["osState"]),
            hyper_v_generation=str(props["hyperVGeneration"]),
            publisher=str(identifier.get("publisher") or ""),
            offer=str(identifier.get("offer") or ""),
            sku=str(identifier.get("sku") or ""),
            security_type=security,
            architecture=str(props["architecture"]),
            plan={str(k): str(v) for k, v in plan.items()} if isinstance(plan, dict) and plan else None,
        )
        existing = sim.store.get(image.id)
        if isinstance(existing, GalleryImage):
            settled = {"provisioningState": ""}
            if existing.to_arm()["properties"] | settled != image.to_arm()["properties"] | settled:
                raise ArmError(
                    409,
                    "Conflict",
                    f"azsim does not change the properties of definition '{m['image']}' once it exists.",
                )
            return ArmReply(200, existing.to_arm())
    return created(sim, req, image, "createGalleryImage", 201, image.to_arm)


def get_gallery_image_version(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    rg = resource_group(sim, m)
    with sim.store.lock:
        image = _gallery_image(sim, m, rg)
        version = sim.store.get(f"{image.id}/versions/{m['version']}")
        if not isinstance(version, GalleryImageVersion):
            raise not_found(
                "Microsoft.Compute/galleries/images/versions",
                f"{m['gallery']}/{m['image']}/{m['version']}",
                m["rg"],
            )
        return ArmReply(200, version.to_arm())


def _check_definition_takes(image: GalleryImage, vm: Vm) -> None:
    """What an image definition requires of a source VM (docs/azsim-rules.md, gallery rules)."""
    if image.security_type in _NO_VM_SOURCE:
        raise invalid(
            f"The security type '{image.security_type}' is not supported for the source id '{vm.id}'. "
            "Currently only Vhd Blob, User Image and Gallery Image Version sources are supported for "
            f"'{image.security_type}' images."
        )

    def differs(what: str, source: str, parent: str, status: int = 400, code: str = "BadRequest") -> ArmError:
        return ArmError(
            status,
            code,
            f"The resource with id '{vm.id}' has a different {what} ['{source}'] than the parent gallery "
            f"image {what} ['{parent}'].",
        )

    if vm.os != image.os:
        raise differs("OS type", vm.os, image.os)
    state = "Generalized" if vm.generalized else "Specialized"
    if state != image.os_state:
        raise differs("OS state", state, image.os_state)
    if vm.hyper_v_generation != image.hyper_v_generation:
        generations = (vm.hyper_v_generation, image.hyper_v_generation)
        raise differs("Hypervisor generation", *generations, 409, "Conflict")
    wanted = _DEFINITION_FOR.get(vm.security_type, vm.security_type)
    if image.security_type != wanted:
        raise invalid(
            f"The source virtual machine '{vm.id}' has security type '{vm.security_type}', but the gallery "
            f"image definition '{image.name}' declares SecurityType '{image.security_type or 'none'}' "
            f"(it must declare '{wanted or 'none'}')."
        )
    if vm.architecture != image.architecture:
        raise invalid(
            f"The source virtual machine '{vm.id}' has architecture '{vm.architecture}', but the gallery "
            f"image definition '{image.name}' has architecture '{image.architecture}'."
        )
    if vm.plan and {k: vm.plan.get(k) for k in ("name", "publisher", "product")} != (image.plan or {}):
        raise invalid(
            f"The source virtual machine '{vm.id}' carries the Marketplace purchase plan "
            f"{vm.plan.get('publisher')}/{vm.plan.get('product')}/{vm.plan.get('name')}; the gallery image "
            f"definition '{image.name}' must declare the same purchasePlan."
        )


def put_gallery_image_version(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    body = req.json()
    rg = resource_group(sim, m)
    props = body.get("properties") or {}
    if not _VERSION.match(m["version"]):
        raise invalid(
            f"The gallery image version name '{m['version']}' is invalid; it must be "
            "MajorVersion.MinorVersion.Patch (e.g. 1.0.0)."
        )
    with sim.store.lock:
        image = _gallery_image(sim, m, rg)
        resource_id = f"{image.id}/versions/{m['version']}"
        source = (props.get("storageProfile") or {}).get("source") or {}
        vm = _source_vm(
            sim,
            source.get("virtualMachineId") or source.get("id"),
            "properties.storageProfile.source.virtualMachineId",
        )
        existing = sim.store.get(resource_id)
        if isinstance(existing, GalleryImageVersion):
            _same_source(existing, vm, "Gallery image version")
            retag(existing, body)
            return ArmReply(200, existing.to_arm())
        _check_definition_takes(image, vm)
        assert vm.os_disk is not None
        publishing = props.get("publishingProfile") or {}
        regions = publishing.get("targetRegions") or [{"name": image.location}]
        version = GalleryImageVersion(
            id=resource_id,
            name=m["version"],
            resource_group=rg,
            location=str(body.get("location") or image.location),
            tags=tags_in(body),
            source_vm_id=vm.id,
            os_disk_size_gb=vm.os_disk.size_gb,
            data_disks=[(lun, d.size_gb) for lun, d in sorted(vm.data_disks, key=lambda x: x[0])],
            target_regions=[
                {
                    "name": r.get("name"),
                    "regionalReplicaCount": r.get("regionalReplicaCount", 1),
                    "storageAccountType": r.get("storageAccountType", "Standard_LRS"),
                }
                for r in regions
                if isinstance(r, dict)
            ],
            exclude_from_latest=bool(publishing.get("excludeFromLatest", False)),
        )
    return created(sim, req, version, "createGalleryImageVersion", 201, version.to_arm)


_C = "Microsoft.Compute"
GALLERY = CP + "/galleries/{gallery}"
ROUTES: list[Route] = [
    route("GET", CP + "/images/{name}", get_image, f"{_C}/images/read", "getImage"),
    route("PUT", CP + "/images/{name}", put_image, f"{_C}/images/write", "createImage"),
    route("GET", GALLERY, get_gallery, f"{_C}/galleries/read", "getGallery"),
    route("PUT", GALLERY, put_gallery, f"{_C}/galleries/write", "createGallery"),
    route(
        "GET",
        GALLERY + "/images/{image}",
        get_gallery_image,
        f"{_C}/galleries/images/read",
        "getGalleryImage",
    ),
    route(
        "PUT",
        GALLERY + "/images/{image}",
        put_gallery_image,
        f"{_C}/galleries/images/write",
        "createGalleryImage",
    ),
    route(
        "GET",
        GALLERY + "/images/{image}/versions/{version}",
        get_gallery_image_version,
        f"{_C}/galleries/images/versions/read",
        "getGalleryImageVersion",
    ),
    route(
        "PUT",
        GALLERY + "/images/{image}/versions/{version}",
        put_gallery_image_version,
        f"{_C}/galleries/images/versions/write",
        "createGalleryImageVersion",
    ),
]
